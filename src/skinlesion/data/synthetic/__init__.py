"""Procedural dermoscopy-like lesions with exact, measured ground truth (ABCD-style).

Used by the test suite, by the demo when no real data exists, and to validate automated ABCDE
measurements. A lesion is a star-shaped region around its centre (see :class:`LesionSpec`):
an ellipse modulated by low-order harmonics (shape asymmetry) and high-order harmonics (border
irregularity), painted with colour layers of the six dermoscopic colours (:data:`COLOUR_RGB`)
with mild texture, on skin of varying tone, optionally with hair, a dermatoscope vignette, ruler
marks and sensor noise. Per-class recipes (:func:`sample_spec`) follow the dermoscopy literature
with overlapping ranges, so the classes are learnable but not trivially separable.

Ground truth (:class:`LesionTruth`) is measured on the rendered mask and colour map, never taken
from the spec's parameters:

* ``asymmetry``: mean over the two principal axes of the shape non-overlap
  ``|M xor mirror(M)| / (2 |M|)`` (:func:`shape_asymmetry`); 0 = symmetric.
* ``asymmetric_axes``: number of principal axes (0-2) about which the lesion is asymmetric in
  shape (index >= :data:`SHAPE_AXIS_THRESHOLD`) or in colour (total-variation distance between
  the colour mixtures of the two halves >= :data:`COLOUR_AXIS_THRESHOLD`, :func:`colour_asymmetry`),
  as the ABCD rule scores A (Stolz et al. 1994).
* ``border_irregularity``: ``1 - P_hull / P`` (:func:`border_irregularity`); 0 = convex.
* ``colours``: exactly the colours painted inside the mask; each covers at least
  :data:`MIN_COLOUR_FRACTION` of it. On a clean render (``noise=0``, no hair/vignette/ruler,
  ``brightness=1``) every mask pixel is nearer (Euclidean RGB) to its painted colour's reference
  than to any other, so the truth can be checked on the pixels. Skin is never counted as a colour.
* ``diameter_px``: maximum Feret diameter of the mask (:func:`feret_diameter`); ``diameter_mm``
  multiplies by the pixel spacing (default: the image width spans :data:`FIELD_OF_VIEW_MM` mm,
  0.11 mm per pixel at 200 px).
* ``centre``: centroid of the mask (row, col); ``area_px``: mask pixel count; ``hair``,
  ``vignette``, ``ruler``: which artefacts were drawn (they never change the mask);
  ``shape_asymmetry_axes``/``colour_asymmetry_axes``: the per-axis indices (major, minor).

Follow-up pairs (:func:`change_spec`, :func:`render_followup`): the same lesion at two visits with
a known change (growth, a new colour, more asymmetry, or none) and a known camera move between them.

Pixel spacing: by default the image width spans :data:`FIELD_OF_VIEW_MM` = 22 mm (0.11 mm per
pixel at 200 px, 0.34 mm at 64 px); lesion sizes are drawn in millimetres, so a class looks the same
size at every resolution. Lesions are kept 2 px inside the image (the largest melanomas are shrunk
to fit the 16.5 mm image height). Shape indices of lesions only a few pixels wide are dominated by
pixelation (see :func:`shape_asymmetry`).

Example:
    >>> image, mask, truth = generate_lesion("MEL", seed=0)
    >>> image.shape, mask.shape, truth.label
    ((150, 200, 3), (150, 200), 'MEL')
"""

from __future__ import annotations

from skinlesion.data.synthetic._followup import CHANGE_KINDS, FollowUpPair, change_spec, fits_followup, render_followup
from skinlesion.data.synthetic._paint import MIN_COLOUR_FRACTION
from skinlesion.data.synthetic._recipes import FIELD_OF_VIEW_MM, SYNTHETIC_CLASSES, default_pixel_spacing, sample_spec
from skinlesion.data.synthetic._render import LesionTruth, generate_lesion, measure_truth, render_lesion, vary_spec
from skinlesion.data.synthetic._shape import (
    COLOUR_AXIS_THRESHOLD,
    SHAPE_AXIS_THRESHOLD,
    border_irregularity,
    colour_asymmetry,
    feret_diameter,
    shape_asymmetry,
)
from skinlesion.data.synthetic._spec import COLOUR_RGB, DERMOSCOPIC_COLOURS, ColourLayer, LesionSpec
from skinlesion.data.synthetic._official import write_isic2018_layout, write_isic2019_layout
from skinlesion.data.synthetic._writer import HAM_DX, write_synthetic_dataset

__all__ = [
    "CHANGE_KINDS",
    "COLOUR_AXIS_THRESHOLD",
    "COLOUR_RGB",
    "DERMOSCOPIC_COLOURS",
    "FIELD_OF_VIEW_MM",
    "HAM_DX",
    "MIN_COLOUR_FRACTION",
    "SHAPE_AXIS_THRESHOLD",
    "SYNTHETIC_CLASSES",
    "ColourLayer",
    "FollowUpPair",
    "LesionSpec",
    "LesionTruth",
    "border_irregularity",
    "change_spec",
    "colour_asymmetry",
    "default_pixel_spacing",
    "feret_diameter",
    "fits_followup",
    "generate_lesion",
    "measure_truth",
    "render_followup",
    "render_lesion",
    "sample_spec",
    "shape_asymmetry",
    "vary_spec",
    "write_isic2018_layout",
    "write_isic2019_layout",
    "write_synthetic_dataset",
]
