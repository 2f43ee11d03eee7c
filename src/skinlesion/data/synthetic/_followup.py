"""Synthetic follow-up pairs: the same lesion photographed twice, with a known change in between.

:func:`change_spec` makes the later lesion from the earlier one (one kind of change, of a known
amount, the rest of the lesion untouched: same shape harmonics, colours, textures and skin):

* ``none``: no change;
* ``growth``: the area grows by ``amount`` (0.2 = +20%; every radius is scaled by ``sqrt(1 + amount)``);
* ``new_colour``: a dermoscopic colour the lesion did not have is painted as patches over ``amount``
  of it (0.1 = 10%; leaning to one side, as new blue-grey or black areas of a melanoma do);
* ``asymmetry``: order-1 and order-3 boundary harmonics of amplitude ``amount`` are added (an
  egg- and a three-lobed deformation: asymmetric about the principal axes).

:func:`render_followup` photographs both lesions as a camera would: the skin and the lesion are
rendered on one larger canvas, and each visit's image is a crop of it through its own camera pose
(the first: the canvas centre; the second: rotated by any angle, shifted and zoomed), so the skin
moves with the lesion as in a real photograph. Hair, vignetting, sensor noise and brightness are
drawn per visit. The exact transform from the second image's pixels to the first's is returned
(``matrix``: scikit-image's (x, y) convention), as are both masks, the pixel spacings and the true
measurements of both lesions (taken on the canvas, before any resampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from skinlesion.data.synthetic._artefacts import draw_hair, draw_vignette
from skinlesion.data.synthetic._render import LesionTruth, render_lesion
from skinlesion.data.synthetic._shape import max_boundary_radius
from skinlesion.data.synthetic._spec import DERMOSCOPIC_COLOURS, ColourLayer, LesionSpec

#: The kinds of change :func:`change_spec` makes.
CHANGE_KINDS: tuple[str, ...] = ("none", "growth", "new_colour", "asymmetry")
#: New colours are chosen among these, in this order of preference after a random shuffle.
_NEW_COLOURS = ("blue_grey", "black", "red", "white", "dark_brown", "light_brown")


def change_spec(spec: LesionSpec, kind: str, amount: float, rng: np.random.Generator) -> LesionSpec:
    """The lesion ``spec`` after a change of ``kind`` (one of :data:`CHANGE_KINDS`) and ``amount``."""
    if kind not in CHANGE_KINDS:
        raise ValueError(f"The 'kind' parameter must be one of {CHANGE_KINDS}. Got {kind!r} instead.")
    if not (math.isfinite(float(amount)) and amount >= 0):
        raise ValueError(f"The 'amount' parameter must be a number >= 0. Got {amount!r} instead.")
    if kind == "none" or amount == 0:
        return spec
    if kind == "growth":
        return replace(spec, radius_px=spec.radius_px * math.sqrt(1.0 + amount))
    if kind == "new_colour":
        if not 0 < amount <= 1:
            raise ValueError(f"A 'new_colour' amount is the area fraction it covers, in (0, 1]. Got {amount!r} instead.")
        absent = [c for c in rng.permutation(_NEW_COLOURS) if c not in spec.colours]
        if not absent:
            raise ValueError(f"The lesion already has all six dermoscopic colours {DERMOSCOPIC_COLOURS}: none can be new.")
        layer = ColourLayer(str(absent[0]), "blotch", coverage=float(amount), scale_px=max(1.0, 0.45 * spec.radius_px),
                            eccentricity=0.6, direction=float(rng.uniform(0, 2 * math.pi)))  # fmt: skip
        return replace(spec, layers=(*spec.layers, layer))
    if amount >= 0.5:
        raise ValueError(f"An 'asymmetry' amount is a harmonic amplitude, in [0, 0.5). Got {amount!r} instead.")
    extra = tuple((k, float(amount), float(rng.uniform(0, 2 * math.pi))) for k in (1, 3))
    return replace(spec, asym_harmonics=spec.asym_harmonics + extra)


@dataclass(frozen=True)
class FollowUpPair:
    """Two visits of one synthetic lesion (see :func:`render_followup`)."""

    before: np.ndarray
    after: np.ndarray
    before_mask: np.ndarray
    after_mask: np.ndarray
    before_spacing_mm: float
    after_spacing_mm: float
    matrix: np.ndarray  # after (x, y, 1) -> before (x, y, 1)
    before_truth: LesionTruth
    after_truth: LesionTruth


def _camera(size: tuple[int, int], canvas: int, rotation_deg: float, zoom: float, shift_px: tuple[float, float]) -> np.ndarray:
    """Image pixel (x, y) -> canvas (x, y): a crop of the canvas centre, rotated, zoomed by ``zoom``
    (>1: magnified) and shifted by ``shift_px`` canvas pixels."""
    h, w = size
    t = math.radians(rotation_deg)
    c, s = math.cos(t) / zoom, math.sin(t) / zoom
    centre_img = np.array([(w - 1) / 2, (h - 1) / 2])
    centre_canvas = np.array([(canvas - 1) / 2 + shift_px[0], (canvas - 1) / 2 + shift_px[1]])
    m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = centre_canvas - m[:2, :2] @ centre_img
    return m


def _shoot(canvas_rgb: np.ndarray, canvas_mask: np.ndarray, cam: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The crop seen through camera ``cam`` (image -> canvas): RGB float and mask."""
    a, offset = cam[:2, :2][::-1, ::-1], cam[:2, 2][::-1]  # (row, col) order for ndimage
    rgb = np.stack([ndimage.affine_transform(canvas_rgb[..., k], a, offset=offset, output_shape=size, order=1, mode="nearest")
                    for k in range(3)], axis=-1)  # fmt: skip
    mask = ndimage.affine_transform(canvas_mask.astype(np.float32), a, offset=offset, output_shape=size, order=1) >= 0.5
    return rgb, mask


def _acquire(rgb: np.ndarray, rng: np.random.Generator, hair: bool, vignette: bool, noise: float, brightness: float) -> np.ndarray:
    if hair:
        rgb = draw_hair(rgb, rng)
    if vignette:
        rgb = draw_vignette(rgb, rng)
    rgb = rgb * brightness
    if noise > 0:
        rgb = rgb + noise * rng.standard_normal(rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_followup(
    before_spec: LesionSpec,
    after_spec: LesionSpec,
    rng: np.random.Generator | int,
    *,
    size: tuple[int, int] = (150, 200),
    rotation_deg: float = 0.0,
    zoom: float = 1.0,
    shift_px: tuple[float, float] = (0.0, 0.0),
    hair: tuple[bool, bool] = (False, False),
    vignette: tuple[bool, bool] = (False, False),
    brightness: tuple[float, float] = (1.0, 1.0),
    noise: float = 3.0,
) -> FollowUpPair:
    """Photograph ``before_spec`` and ``after_spec`` (same texture seed and skin: see
    :func:`change_spec`) as two visits; the second camera pose is ``rotation_deg``, ``zoom`` and
    ``shift_px`` (canvas pixels) away from the first. Spec centres are in the image frame of ``size``.

    Raises:
        ValueError: a lesion that does not fit inside either image.
    """
    rng = np.random.default_rng(rng)
    h, w = size
    if not (math.isfinite(zoom) and 0.25 <= zoom <= 4):
        raise ValueError(f"The 'zoom' parameter must be in [0.25, 4]. Got {zoom!r} instead.")
    canvas = int(math.ceil(math.hypot(h, w) / min(1.0, zoom) + 2 * max(abs(v) for v in shift_px) + 8))
    offset = ((canvas - 1) / 2 - (h - 1) / 2, (canvas - 1) / 2 - (w - 1) / 2)
    renders = []
    for spec in (before_spec, after_spec):
        moved = replace(spec, centre=(spec.centre[0] + offset[0], spec.centre[1] + offset[1]))
        renders.append(render_lesion(moved, 0, size=(canvas, canvas), noise=0.0))
    cams = [_camera(size, canvas, 0.0, 1.0, (0.0, 0.0)), _camera(size, canvas, rotation_deg, zoom, shift_px)]
    images, masks = [], []
    for k, ((rgb, mask, _), cam) in enumerate(zip(renders, cams)):
        shot, shot_mask = _shoot(rgb.astype(np.float32), mask, cam, size)
        if shot_mask[0].any() or shot_mask[-1].any() or shot_mask[:, 0].any() or shot_mask[:, -1].any() or shot_mask.sum() < 3:
            raise ValueError(f"The {'before' if k == 0 else 'after'} lesion does not fit inside the {size} image.")
        images.append(_acquire(shot, rng, hair[k], vignette[k], noise, brightness[k]))
        masks.append(shot_mask)
    matrix = np.linalg.inv(cams[0]) @ cams[1]
    spacing = before_spec.pixel_spacing_mm
    return FollowUpPair(images[0], images[1], masks[0], masks[1], spacing, spacing / zoom, matrix, renders[0][2], renders[1][2])


def fits_followup(spec: LesionSpec, size: tuple[int, int], growth: float, zoom: float, shift_px: float) -> LesionSpec:
    """``spec`` shrunk (when needed) and centred so that it still fits inside the image after
    growing by ``growth`` and being photographed at ``zoom`` shifted by up to ``shift_px``."""
    h, w = size
    limit = (min(h, w) / 2 - 3.0) / max(1.0, zoom) - shift_px
    reach = (max_boundary_radius(spec) + spec.edge_width_px) * math.sqrt(1.0 + growth)
    spec = replace(spec, centre=((h - 1) / 2, (w - 1) / 2))
    if reach > limit:
        spec = replace(spec, radius_px=max(1.5, spec.radius_px * limit / reach))
    return spec
