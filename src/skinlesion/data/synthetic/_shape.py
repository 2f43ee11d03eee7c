"""Lesion geometry (star-shaped boundary) and the shape measurements used as ground truth.

All measurements take the rendered boolean mask only, so they can be applied unchanged to a mask
produced by a segmentation model and compared with the truth.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.measure import find_contours, regionprops

from skinlesion.data.synthetic._spec import LesionSpec

#: An axis counts as asymmetric when the shape non-overlap about it reaches this fraction ...
SHAPE_AXIS_THRESHOLD = 0.06
#: ... or when the colour distributions of the two halves it separates differ by this much
#: (total-variation distance of the per-colour area fractions).
COLOUR_AXIS_THRESHOLD = 0.20


@dataclass(frozen=True)
class LesionGeometry:
    """Per-pixel lesion-frame coordinates of one rendered spec (arrays of the image shape)."""

    x: np.ndarray  # lesion-frame coordinate along the major axis (pixels)
    y: np.ndarray  # lesion-frame coordinate along the minor axis (pixels)
    rho: np.ndarray  # distance to the centre (pixels)
    boundary: np.ndarray  # boundary radius r(t) in the direction of each pixel (pixels)
    mask: np.ndarray  # rho <= boundary
    max_radius: float  # largest boundary radius over all directions


def boundary_radius(spec: LesionSpec, t: np.ndarray) -> np.ndarray:
    """``r(t)`` of the spec for lesion-frame angles ``t`` (see :class:`LesionSpec`)."""
    q = math.sqrt(spec.elongation)
    a, b = spec.radius_px / q, spec.radius_px * q  # semi-axes, a * b = radius_px ** 2
    ellipse = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    mod = np.ones_like(t)
    for k, amp, phase in spec.asym_harmonics + spec.border_harmonics:
        mod = mod + amp * np.cos(k * t + phase)
    return ellipse * np.maximum(mod, 0.3)


_N_TABLE = 4096  # boundary samples; linear interpolation error < 1e-3 px for orders <= 200, radii <= 1e3 px


def _boundary_table(spec: LesionSpec) -> tuple[np.ndarray, np.ndarray]:
    return _table(spec.radius_px, spec.elongation, spec.asym_harmonics + spec.border_harmonics)


@functools.lru_cache(maxsize=64)
def _table(
    radius_px: float, elongation: float, harmonics: tuple[tuple[int, float, float], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Boundary radius on a fine angular grid; cached on the shape alone (not pose), read-only."""
    shape_only = LesionSpec("", (0.0, 0.0), radius_px, elongation=elongation,
                            asym_harmonics=tuple(h for h in harmonics if h[0] <= 4),
                            border_harmonics=tuple(h for h in harmonics if h[0] > 4))  # fmt: skip
    t = np.linspace(-np.pi, np.pi, _N_TABLE + 1)
    r = boundary_radius(shape_only, t)
    t.flags.writeable = False
    r.flags.writeable = False
    return t, r


def max_boundary_radius(spec: LesionSpec) -> float:
    """Largest boundary radius over all directions (plus a pixel of slack)."""
    return float(_boundary_table(spec)[1].max()) + 1.0


def lesion_geometry(spec: LesionSpec, size: tuple[int, int]) -> LesionGeometry:
    """Lesion-frame coordinates and mask of ``spec`` on an image of ``size`` (H, W); pixel centres
    sit at integer (row, col). The boundary is evaluated on a fine angular table (4096 steps) and
    interpolated linearly."""
    h, w = size
    rows = np.arange(h, dtype=np.float64)[:, None] - spec.centre[0]
    cols = np.arange(w, dtype=np.float64)[None, :] - spec.centre[1]
    c, s = math.cos(spec.angle), math.sin(spec.angle)
    x = cols * c + rows * s
    y = rows * c - cols * s
    if spec.flip:
        y = -y
    rho = np.hypot(x, y)
    t_table, r_table = _boundary_table(spec)
    boundary = np.interp(np.arctan2(y, x), t_table, r_table)
    return LesionGeometry(x, y, rho, boundary, rho <= boundary, float(r_table.max()) + 1.0)


def principal_axes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (row, col) and the unit principal axes of the mask as rows (major first)."""
    rows, cols = np.nonzero(mask)
    centroid = np.array([rows.mean(), cols.mean()])
    cov = np.cov(np.stack([rows - centroid[0], cols - centroid[1]])) if len(rows) > 1 else np.eye(2)
    _, vecs = np.linalg.eigh(cov)
    return centroid, vecs[:, ::-1].T


def _mirror(points: np.ndarray, centroid: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Mirror (2, ...) row/col coordinates about the line through ``centroid`` along ``axis``."""
    p = points - centroid.reshape(2, *([1] * (points.ndim - 1)))
    along = axis[0] * p[0] + axis[1] * p[1]
    return np.stack([centroid[0] + 2 * along * axis[0] - p[0], centroid[1] + 2 * along * axis[1] - p[1]])


def shape_asymmetry(mask: np.ndarray) -> tuple[float, float]:
    """Shape asymmetry about the major and the minor principal axis through the centroid.

    For each axis the mask ``M`` is mirrored about it (bilinear resampling, threshold 0.5) and the
    index is ``|M xor mirror(M)| / (2 |M|)``: the fraction of the lesion area that does not overlap
    its mirror image, in [0, 1], 0 for a perfectly symmetric shape (after Stoecker et al. 1992,
    "Automatic detection of asymmetry in skin tumors"). Pixelation alone gives digitised ellipses
    up to ~0.02 at 15 px radius, ~0.06 at 8 px and ~0.12 at 3 px: below ~10 px radius (e.g. small
    naevi in 64 px wide images) the index says more about the grid than about the lesion.
    """
    mask = np.asarray(mask, dtype=bool)
    area = int(mask.sum())
    if area < 3:
        return 0.0, 0.0
    centroid, axes = principal_axes(mask)
    pts = np.stack(np.nonzero(mask)).astype(np.float64)
    out = []
    for axis in axes:
        both = np.concatenate([pts, _mirror(pts, centroid, axis)], axis=1)
        lo = np.maximum(np.floor(both.min(axis=1)).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(both.max(axis=1)).astype(int) + 2, mask.shape)
        crop = mask[lo[0] : hi[0], lo[1] : hi[1]]
        grid = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(np.float64)
        coords = _mirror(grid, centroid, axis)
        mirrored = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, cval=0.0) >= 0.5
        out.append(min(1.0, float((crop ^ mirrored).sum()) / (2.0 * area)))
    return out[0], out[1]


def colour_asymmetry(labels: np.ndarray, mask: np.ndarray, n_colours: int) -> tuple[float, float]:
    """Colour asymmetry about the major and the minor principal axis of the mask.

    ``labels`` holds a colour index per lesion pixel. For each axis the lesion is cut in two halves
    by the axis and the index is the total-variation distance between the halves' colour area
    fractions, ``0.5 * sum_c |p_c(left) - p_c(right)|``, in [0, 1]: 0 when both halves hold the
    same colour mixture, 1 when they share no colour.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 3:
        return 0.0, 0.0
    centroid, axes = principal_axes(mask)
    rows, cols = np.nonzero(mask)
    lab = labels[rows, cols]
    out = []
    for axis in axes:
        normal = np.array([-axis[1], axis[0]])
        side = (rows - centroid[0]) * normal[0] + (cols - centroid[1]) * normal[1] > 0
        if side.all() or not side.any():
            out.append(0.0)
            continue
        p = np.bincount(lab[side], minlength=n_colours) / side.sum()
        q = np.bincount(lab[~side], minlength=n_colours) / (~side).sum()
        out.append(float(0.5 * np.abs(p - q).sum()))
    return out[0], out[1]


def _contour_length(image: np.ndarray) -> float:
    contours = find_contours(np.pad(image.astype(np.float32), 1), 0.5)
    return float(sum(np.hypot(*np.diff(c, axis=0).T).sum() for c in contours))


def _border_from_props(props) -> float:  # noqa: ANN001 - skimage RegionProperties
    p = _contour_length(props.image)
    p_hull = _contour_length(props.image_convex)
    return float(max(0.0, 1.0 - p_hull / p)) if p > 0 else 0.0


def border_and_diameter(mask: np.ndarray) -> tuple[float, float]:
    """:func:`border_irregularity` and :func:`feret_diameter` sharing one convex hull."""
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 3:
        return 0.0, feret_diameter(mask)
    props = regionprops(mask.astype(np.uint8))[0]
    return _border_from_props(props), float(props.feret_diameter_max)


def border_irregularity(mask: np.ndarray) -> float:
    """``1 - P_hull / P``: one minus the convexity of the mask, in [0, 1).

    ``P`` is the length of the mask's outline and ``P_hull`` that of its convex hull (both traced
    at level 0.5 by marching squares). A convex shape scores ~0 (digitised ellipses below ~0.02), a
    ragged or notched border scores higher (the "convexity" shape descriptor; it ignores a smooth
    elongation or lobulation that stays convex, which is what the asymmetry index measures).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 3:
        return 0.0
    return _border_from_props(regionprops(mask.astype(np.uint8))[0])


def feret_diameter(mask: np.ndarray) -> float:
    """Greatest diameter (maximum Feret diameter, scikit-image ``feret_diameter_max``) in pixels."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    return float(regionprops(mask.astype(np.uint8))[0].feret_diameter_max)
