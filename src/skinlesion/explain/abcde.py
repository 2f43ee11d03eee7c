"""Automated ABCDE dermoscopy measurements, in millimetres when the pixel spacing is known.

Decision aids, not diagnoses: every :class:`ABCDEResult` carries :data:`NOTICE`.

* **A** (asymmetry, Stolz et al. 1994; Stoecker et al. 1992): about each principal axis of the mask
  through its centroid, the *shape* asymmetry ``|M xor mirror(M)| / (2 |M|)`` and the *colour*
  asymmetry, the total-variation distance between the colour mixtures of the two halves. An axis
  is asymmetric when the shape index reaches :data:`SHAPE_AXIS_THRESHOLD` (0.06) or the colour
  index :data:`COLOUR_AXIS_THRESHOLD` (0.20); ``asymmetric_axes`` counts them, 0-2. The same
  functions and thresholds define the synthetic generator's ground truth.
* **B** (border): compactness ``P^2 / (4 pi A)`` (1 for a disc), the convexity defect
  ``1 - P_hull / P`` and the number of the eight 45-degree border sectors with an abrupt cut-off of
  pigment (lightness rising from lesion to skin within :data:`ABRUPT_MAX_RISE_PX` px, see
  ``_abcde_border``), 0-8.
* **C** (colours): which of white, red, light brown, dark brown, blue-grey and black cover at least
  :data:`MIN_COLOUR_FRACTION` (3%) of the lesion; pixels are classified by the nearest reference
  colour in CIELAB (see ``_abcde_colour``).
* **D** (diameter): the maximum Feret diameter in pixels, and in millimetres only when
  ``pixel_spacing_mm`` is given (``diameter_unit`` says which; the clinical "> 6 mm" flag is None
  when the spacing is unknown). Not the D of the Stolz score (differential structures, see ``tds``).
* **E** (evolution): :func:`compare_evolution` of two results of the same lesion.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from skinlesion.data.synthetic import (
    COLOUR_AXIS_THRESHOLD,
    DERMOSCOPIC_COLOURS,
    SHAPE_AXIS_THRESHOLD,
    colour_asymmetry,
    feret_diameter,
    shape_asymmetry,
)
from skinlesion.data.synthetic import (
    border_irregularity as convexity_defect,
)
from skinlesion.explain._abcde_artefacts import field_of_view, remove_hair
from skinlesion.explain._abcde_border import (
    ABRUPT_MAX_RISE_PX,
    border_sectors,
    compactness,
    perimeter,
)
from skinlesion.explain._abcde_checks import check_image, check_mask, check_spacing
from skinlesion.explain._abcde_colour import (
    MIN_FRACTION,
    SKIN_LABEL,
    classify_pixels,
    colour_fractions,
    present_colours,
)
from skinlesion.explain.segmentation import segment_lesion

__all__ = [
    "ABRUPT_MAX_RISE_PX",
    "CLINICAL_DIAMETER_MM",
    "COLOUR_AXIS_THRESHOLD",
    "MIN_COLOUR_FRACTION",
    "NOTICE",
    "SHAPE_AXIS_THRESHOLD",
    "ABCDEResult",
    "compare_evolution",
    "measure_abcde",
]

#: Attached to every result: what these numbers are and are not.
NOTICE = (
    "Automated dermoscopy measurements for clinical decision support only: they describe the image, "
    "they are not a diagnosis, and they can be wrong (segmentation, lighting, artefacts). "
    "A clinician must interpret them."
)
#: The clinical ABCDE rule's diameter criterion (Friedman et al. 1985).
CLINICAL_DIAMETER_MM = 6.0
MIN_COLOUR_FRACTION = MIN_FRACTION


@dataclass(frozen=True)
class ABCDEResult:
    """ABCDE measurements of one lesion (see the module docstring for definitions).

    Lengths are in pixels unless named ``_mm``; ``*_mm`` fields are None when the spacing is unknown.
    Per-axis tuples are (major, minor) principal axis; per-sector tuples start at the image's +x
    axis and turn counter-clockwise.
    """

    shape_asymmetry_axes: tuple[float, float]
    colour_asymmetry_axes: tuple[float, float]
    asymmetric_axes: int
    asymmetry: float  # mean shape asymmetry over both axes (the generator's ``asymmetry``)
    compactness: float
    border_irregularity: float  # 1 - P_hull / P
    abrupt_border_sectors: int
    border_sector_gradients: tuple[float, ...]
    border_sector_rise_px: tuple[float, ...]
    colours: tuple[str, ...]
    colour_fractions: dict[str, float]
    diameter_px: float
    diameter_mm: float | None
    diameter_unit: str  # "mm" when the spacing is known, else "px"
    spacing_known: bool
    pixel_spacing_mm: float | None
    larger_than_6mm: bool | None  # None when the spacing is unknown
    area_px: int
    area_mm2: float | None
    perimeter_px: float
    image_shape: tuple[int, int]
    segmentation: str  # "provided" or the automatic segmentation's quality flag
    notice: str = field(default=NOTICE)

    @property
    def diameter(self) -> float:
        """Diameter in :attr:`diameter_unit`."""
        return self.diameter_mm if self.diameter_mm is not None else self.diameter_px

    @property
    def area(self) -> float:
        """Area in :attr:`diameter_unit` squared."""
        return self.area_mm2 if self.area_mm2 is not None else float(self.area_px)

    def to_dict(self) -> dict:
        """JSON-friendly dict (tuples become lists, infinities None)."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = [None if isinstance(v, float) and not math.isfinite(v) else v for v in value]
        return d


def measure_abcde(
    image: np.ndarray, mask: np.ndarray | None = None, pixel_spacing_mm: float | None = None
) -> ABCDEResult:
    """Measure asymmetry, border, colours and diameter of the lesion in ``image``.

    Args:
        image: uint8 RGB array (H, W, 3).
        mask: bool (H, W) lesion mask; when None the lesion is segmented with
            :func:`~skinlesion.explain.segmentation.segment_lesion`.
        pixel_spacing_mm: millimetres per pixel, or None when unknown (then sizes stay in pixels
            and ``diameter_unit == "px"``; nothing is reported in millimetres).

    Returns:
        :class:`ABCDEResult`, a decision aid (see its ``notice``).

    Raises:
        ValueError: a bad image, an empty or misshapen mask, a non-positive spacing, or a failed
            automatic segmentation.
    """
    image = check_image(image)
    spacing = check_spacing(pixel_spacing_mm)
    if mask is None:
        seg = segment_lesion(image)
        if seg.quality == "not_found":
            raise ValueError("No lesion was found in 'image' by the automatic segmentation; pass a 'mask'.")
        mask, status = seg.mask, seg.quality
    else:
        mask, status = check_mask(mask, image.shape[:2]), "provided"
    rgb, hair = remove_hair(image, mask)
    fov, _ = field_of_view(rgb)
    lesion = mask & ~hair if (mask & ~hair).sum() >= 0.5 * mask.sum() else mask

    # C: colours (hair pixels inside the lesion are inpainted, so classify the cleaned image)
    skin_pixels = fov & ~ndimage.binary_dilation(mask, iterations=4) & ~hair
    skin_rgb = tuple(np.median(255.0 * rgb[skin_pixels], axis=0)) if skin_pixels.sum() >= 20 else None
    labels = np.full(mask.shape, SKIN_LABEL, dtype=np.int64)
    labels[lesion] = classify_pixels(255.0 * rgb[lesion], skin_rgb)
    fractions = colour_fractions(labels[lesion])
    colours = present_colours(fractions)

    # A: shape and colour asymmetry about the principal axes
    shape_axes = shape_asymmetry(mask)
    colour_axes = colour_asymmetry(np.where(mask, labels, 0), mask, SKIN_LABEL + 1)
    axes = sum(int(s >= SHAPE_AXIS_THRESHOLD or c >= COLOUR_AXIS_THRESHOLD) for s, c in zip(shape_axes, colour_axes))

    # B: compactness, convexity defect, abrupt sectors
    n_abrupt, gradients, rises = border_sectors(rgb, mask, fov & ~hair)

    # D: maximum Feret diameter
    diameter_px = feret_diameter(mask)
    area_px = int(mask.sum())
    return ABCDEResult(
        shape_asymmetry_axes=(float(shape_axes[0]), float(shape_axes[1])),
        colour_asymmetry_axes=(float(colour_axes[0]), float(colour_axes[1])),
        asymmetric_axes=int(axes),
        asymmetry=float(np.mean(shape_axes)),
        compactness=float(compactness(mask)),
        border_irregularity=float(convexity_defect(mask)),
        abrupt_border_sectors=int(n_abrupt),
        border_sector_gradients=gradients,
        border_sector_rise_px=rises,
        colours=colours,
        colour_fractions=fractions,
        diameter_px=float(diameter_px),
        diameter_mm=None if spacing is None else float(diameter_px * spacing),
        diameter_unit="px" if spacing is None else "mm",
        spacing_known=spacing is not None,
        pixel_spacing_mm=spacing,
        larger_than_6mm=None if spacing is None else bool(diameter_px * spacing > CLINICAL_DIAMETER_MM),
        area_px=area_px,
        area_mm2=None if spacing is None else float(area_px * spacing**2),
        perimeter_px=float(perimeter(mask)),
        image_shape=(int(image.shape[0]), int(image.shape[1])),
        segmentation=status,
    )


def compare_evolution(before: ABCDEResult, after: ABCDEResult, *, compare_sizes: bool = True) -> dict:
    """E of ABCDE: how a lesion changed between two examinations.

    Sizes are compared in millimetres when both results know their pixel spacing (which may then
    differ: the millimetre values are already converted), or in pixels when neither does and both
    images have the same size (assuming the same dermatoscope and magnification). With
    ``compare_sizes=False`` area and diameter are None (``unit`` "not compared") and images of any
    size compare: colours, asymmetry and border do not depend on the magnification.

    Returns:
        dict with ``unit``, area and diameter before/after/change (absolute and relative), colours
        gained and lost, the change of asymmetric axes and mean shape asymmetry, and ``notice``.

    Raises:
        ValueError: one result in millimetres and the other in pixels, or pixel results from images
            of different sizes.
    """
    for name, value in (("before", before), ("after", after)):
        if not isinstance(value, ABCDEResult):
            raise ValueError(f"The '{name}' parameter must be an ABCDEResult. Got {type(value).__name__} instead.")
    if not compare_sizes:
        return {"unit": "not compared", "area": None, "diameter": None, **_shape_and_colour_change(before, after)}
    if before.spacing_known != after.spacing_known:
        raise ValueError(
            "Cannot compare a measurement in millimetres with one in pixels: 'before' is in "
            f"{before.diameter_unit} and 'after' in {after.diameter_unit}. Measure both with 'pixel_spacing_mm'."
        )
    if not before.spacing_known and before.image_shape != after.image_shape:
        raise ValueError(
            "Cannot compare pixel measurements of images of different sizes "
            f"({before.image_shape} and {after.image_shape}): the pixel spacings may differ. "
            "Measure both with 'pixel_spacing_mm' to compare in millimetres."
        )
    unit = before.diameter_unit
    return {
        "unit": unit,
        "area": _change(before.area, after.area),
        "diameter": _change(before.diameter, after.diameter),
        **_shape_and_colour_change(before, after),
    }


def _change(a: float, b: float) -> dict:
    return {"before": a, "after": b, "change": b - a, "relative_change": (b - a) / a if a > 0 else None}


def _shape_and_colour_change(before: ABCDEResult, after: ABCDEResult) -> dict:
    return {
        "pixel_spacing_mm": {"before": before.pixel_spacing_mm, "after": after.pixel_spacing_mm},
        "colours_gained": [c for c in DERMOSCOPIC_COLOURS if c in after.colours and c not in before.colours],
        "colours_lost": [c for c in DERMOSCOPIC_COLOURS if c in before.colours and c not in after.colours],
        "asymmetric_axes": {"before": before.asymmetric_axes, "after": after.asymmetric_axes,
                            "change": after.asymmetric_axes - before.asymmetric_axes},  # fmt: skip
        "asymmetry": _change(before.asymmetry, after.asymmetry),
        "abrupt_border_sectors_change": after.abrupt_border_sectors - before.abrupt_border_sectors,
        "notice": NOTICE,
    }
