"""Rendering a :class:`LesionSpec` and measuring its ground truth (see ``synthetic``)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np

from skinlesion.data.synthetic._artefacts import draw_hair, draw_ruler, draw_vignette
from skinlesion.data.synthetic._paint import composite
from skinlesion.data.synthetic._recipes import check_size, sample_spec
from skinlesion.data.synthetic._shape import (
    COLOUR_AXIS_THRESHOLD,
    SHAPE_AXIS_THRESHOLD,
    border_and_diameter,
    colour_asymmetry,
    lesion_geometry,
    max_boundary_radius,
    shape_asymmetry,
)
from skinlesion.data.synthetic._spec import DERMOSCOPIC_COLOURS, LesionSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LesionTruth:
    """What a rendered lesion really is, measured on its mask and colour map (see ``synthetic``)."""

    label: str
    asymmetry: float
    asymmetric_axes: int
    border_irregularity: float
    colours: tuple[str, ...]
    diameter_px: float
    diameter_mm: float
    pixel_spacing_mm: float
    area_px: int
    centre: tuple[float, float]
    hair: bool
    vignette: bool
    ruler: bool = False
    shape_asymmetry_axes: tuple[float, float] = (0.0, 0.0)  # (major, minor) principal axis
    colour_asymmetry_axes: tuple[float, float] = (0.0, 0.0)  # (major, minor) principal axis

    def to_dict(self) -> dict:
        """Flat, CSV-friendly dict: tuples become ``|``-joined strings or split columns."""
        d = asdict(self)
        d["colours"] = "|".join(self.colours)
        d["centre_row"], d["centre_col"] = self.centre
        for name in ("shape_asymmetry_axes", "colour_asymmetry_axes"):
            d[f"{name[:-5]}_major"], d[f"{name[:-5]}_minor"] = d.pop(name)
        del d["centre"]
        return d


def measure_truth(
    spec: LesionSpec,
    mask: np.ndarray,
    labels: np.ndarray,
    *,
    hair: bool = False,
    vignette: bool = False,
    ruler: bool = False,
) -> LesionTruth:
    """Ground truth of a rendered lesion from its mask and colour-index map (-1 off the lesion)."""
    n_col = len(DERMOSCOPIC_COLOURS)
    counts = np.bincount(labels[mask], minlength=n_col)
    shape_axes = shape_asymmetry(mask)
    colour_axes = colour_asymmetry(np.where(mask, labels, 0), mask, n_col)
    axes = sum(int(s >= SHAPE_AXIS_THRESHOLD or c >= COLOUR_AXIS_THRESHOLD) for s, c in zip(shape_axes, colour_axes))
    rows, cols = np.nonzero(mask)
    border, diameter = border_and_diameter(mask)
    return LesionTruth(
        label=spec.label,
        asymmetry=float(np.mean(shape_axes)),
        asymmetric_axes=int(axes),
        border_irregularity=border,
        colours=tuple(c for c, n in zip(DERMOSCOPIC_COLOURS, counts) if n > 0),
        diameter_px=diameter,
        diameter_mm=diameter * spec.pixel_spacing_mm,
        pixel_spacing_mm=spec.pixel_spacing_mm,
        area_px=int(mask.sum()),
        centre=(float(rows.mean()), float(cols.mean())),
        hair=bool(hair),
        vignette=bool(vignette),
        ruler=bool(ruler),
        shape_asymmetry_axes=shape_axes,
        colour_asymmetry_axes=colour_axes,
    )


def render_lesion(
    spec: LesionSpec,
    rng: np.random.Generator | int,
    *,
    size: tuple[int, int] = (150, 200),
    hair: bool = False,
    vignette: bool = False,
    ruler: bool = False,
    noise: float = 3.0,
    brightness: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, LesionTruth]:
    """Render ``spec`` on an image of ``size`` (H, W).

    ``rng`` (or a seed) draws only the acquisition effects: hair, ruler, vignette and Gaussian
    noise of standard deviation ``noise`` (0-255 scale); ``brightness`` scales the whole image.
    The lesion itself is fixed by the spec.

    Returns:
        image: uint8 (H, W, 3) RGB.
        mask: bool (H, W), the lesion; hair and ruler marks drawn over it do not change it.
        truth: :class:`LesionTruth` measured on ``mask`` and the painted colour map.

    Raises:
        ValueError: bad ``size``, ``noise`` or ``brightness``, or a spec whose lesion misses the image.
    """
    size = check_size(size)
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"The 'noise' parameter must be a non-negative number. Got {noise!r} instead.")
    if not (np.isfinite(brightness) and brightness > 0):
        raise ValueError(f"The 'brightness' parameter must be a positive number. Got {brightness!r} instead.")
    rng = np.random.default_rng(rng)
    geo = lesion_geometry(spec, size)
    if geo.mask.sum() < 3:
        raise ValueError(
            f"The lesion spec covers {int(geo.mask.sum())} pixel(s) of a {size} image (centre={spec.centre}, "
            f"radius_px={spec.radius_px:.2f}); it must cover at least 3."
        )
    m = geo.mask
    if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
        logger.warning(
            "Synthetic %s lesion touches the image border; its measured truth is that of the cut mask.", spec.label
        )
    image, labels, mask = composite(spec, geo, size)
    if hair:
        image = draw_hair(image, rng)
    if ruler:
        image = draw_ruler(image, rng, spec.pixel_spacing_mm)
    if vignette:
        image = draw_vignette(image, rng)
    if brightness != 1.0:
        image = image * brightness
    if noise > 0:
        image = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out, mask, measure_truth(spec, mask, labels, hair=hair, vignette=vignette, ruler=ruler)


def vary_spec(
    spec: LesionSpec,
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (150, 200),
    max_rotation: float = np.pi / 6,
    flip_prob: float = 0.25,
    max_shift: float = 0.06,
) -> LesionSpec:
    """Another view of the same lesion: rotated (up to ``max_rotation`` radians), mirrored with
    ``flip_prob``, shifted (up to ``max_shift`` of the image size) while staying inside the image."""
    rotated = replace(
        spec,
        angle=spec.angle + float(rng.uniform(-max_rotation, max_rotation)),
        flip=spec.flip ^ bool(rng.random() < flip_prob),
    )
    return _shift_within(rotated, check_size(size), rng, max_shift)


def _shift_within(spec: LesionSpec, size: tuple[int, int], rng: np.random.Generator, max_shift: float) -> LesionSpec:
    """Shift the centre by up to ``max_shift`` of the image size, clipped so the lesion and its
    rim stay 2 px inside the image (the bound holds for any rotation)."""
    h, w = size
    reach = max_boundary_radius(spec) + spec.edge_width_px + 2.0
    centre = []
    for value, extent in zip(spec.centre, (h, w)):
        target = value + float(rng.uniform(-max_shift, max_shift)) * extent
        lo, hi = reach - 0.5, extent - 0.5 - reach
        centre.append(float(np.clip(target, lo, hi)) if lo <= hi else (extent - 1) / 2)
    return replace(spec, centre=(centre[0], centre[1]))


def generate_lesion(
    label: str, seed: int, *, size: tuple[int, int] = (150, 200), hair: bool | None = None, vignette: bool | None = None
) -> tuple[np.ndarray, np.ndarray, LesionTruth]:
    """One lesion of class ``label``, deterministic from ``seed``; hair and vignette are drawn
    with probability 0.3 each when None. Returns ``(image, mask, truth)`` as :func:`render_lesion`."""
    rng = np.random.default_rng(seed)
    spec = sample_spec(label, rng, size=size)
    hair = bool(rng.random() < 0.3) if hair is None else hair
    vignette = bool(rng.random() < 0.3) if vignette is None else vignette
    return render_lesion(spec, rng, size=size, hair=hair, vignette=vignette)
