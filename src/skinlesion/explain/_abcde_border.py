"""The B of ABCD: compactness and the border sectors with an abrupt cut-off of pigment.

Stolz et al. (1994) score B as the number of the eight 45-degree sectors of the border (around the
lesion's centre) in which the pigment pattern ends abruptly, 0-8. Here, in each sector, the mean
CIELAB lightness L* is profiled against the signed distance to the border (normal to it); the
lightness rises from the lesion level (2-5 px inside) to the skin level (5-8 px outside), and the
*rise width* is the distance over which it covers the middle 60% of that change (20% to 80%).
The sector is abrupt when the edge gradient ``0.6 * |contrast| / rise_width`` reaches
:data:`ABRUPT_MIN_GRADIENT` L* units per pixel *and* the rise width is at most
:data:`ABRUPT_MAX_RISE_PX`, i.e. the lesion ends within about 0.2 mm at the
0.11 mm pixels of 200 px wide dermoscopy images.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.measure import find_contours

#: Largest 20%-80% rise width (pixels) of an abrupt border sector.
ABRUPT_MAX_RISE_PX = 2.0
#: Smallest edge gradient (L* units per pixel) of an abrupt border sector.
ABRUPT_MIN_GRADIENT = 3.0
#: Sectors whose lesion-to-skin lightness contrast is below this (L* units) are never abrupt.
MIN_EDGE_CONTRAST = 5.0
N_SECTORS = 8

_D_MIN, _D_MAX = -5, 8  # profile range in pixels (negative inside)


def perimeter(mask: np.ndarray) -> float:
    """Length of the mask's outline in pixels: marching squares at level 0.5 of the mask smoothed by
    a Gaussian of sigma 1 px, which removes the staircase of the pixel grid (traced on the raw mask,
    a digitised disc's perimeter comes out 7-23% too long; smoothed, within 1% above 10 px radius)."""
    smooth = ndimage.gaussian_filter(np.pad(mask.astype(np.float32), 3), 1.0)
    contours = find_contours(smooth, 0.5)
    return float(sum(np.hypot(*np.diff(c, axis=0).T).sum() for c in contours))


def compactness(mask: np.ndarray) -> float:
    """Compactness index ``P^2 / (4 pi A)``: 1 for a disc, larger for elongated or ragged borders."""
    area = float(mask.sum())
    return perimeter(mask) ** 2 / (4.0 * math.pi * area) if area > 0 else float("nan")


def _rise_width(profile: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """(contrast, 20-80% rise width) of a lightness profile sampled at distances ``d``."""
    inner = profile[(d >= -5) & (d <= -2)]
    outer = profile[(d >= 5) & (d <= 8)]
    if inner.size == 0 or outer.size == 0 or np.isnan(inner).all() or np.isnan(outer).all():
        return 0.0, float("inf")
    lo, hi = float(np.nanmean(inner)), float(np.nanmean(outer))
    contrast = hi - lo
    if abs(contrast) < 1e-6:
        return 0.0, float("inf")
    u = (profile - lo) / contrast
    ok = ~np.isnan(u)
    u, d = np.maximum.accumulate(u[ok]), d[ok]  # monotone from the lesion out
    if u[-1] < 0.8 or u[0] > 0.2:
        return contrast, float("inf")
    return contrast, float(np.interp(0.8, u, d) - np.interp(0.2, u, d))


def border_sectors(
    rgb: np.ndarray, mask: np.ndarray, valid: np.ndarray | None = None
) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Abrupt-border sectors of a lesion.

    Args:
        rgb: float RGB image (H, W, 3) in 0-1 (hair already removed).
        mask: bool lesion mask.
        valid: bool map of pixels usable for the profiles (field of view, no hair); all when None.

    Returns:
        ``(n_abrupt, gradients, rise_widths)``: the count 0-8 and, per sector (counter-clockwise
        from the image's +x axis), the edge gradient (L* per pixel) and the rise width (pixels;
        inf where the lightness never rises cleanly from lesion to skin).
    """
    lightness = rgb2lab(np.clip(rgb, 0.0, 1.0))[..., 0]
    lightness = ndimage.gaussian_filter(lightness, 0.5)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    signed = np.where(mask, -(inside - 0.5), outside - 0.5)  # pixel centres at +-0.5, +-1.5, ...
    rows, cols = np.nonzero(mask)
    cr, cc = rows.mean(), cols.mean()
    rr, col = np.indices(mask.shape)
    sector = (np.floor((np.arctan2(-(rr - cr), col - cc) % (2 * np.pi)) / (2 * np.pi / N_SECTORS))).astype(int)
    sector = np.minimum(sector, N_SECTORS - 1)
    near = (signed >= _D_MIN - 0.5) & (signed <= _D_MAX + 0.5)
    if valid is not None:
        near &= valid
    d_bin = np.rint(signed - 0.5).astype(int)  # -5..8 -> bins of 1 px, centres at k + 0.5
    d = np.arange(_D_MIN, _D_MAX + 1) + 0.5
    gradients, widths, n_abrupt = [], [], 0
    for k in range(N_SECTORS):
        sel = near & (sector == k)
        idx = np.clip(d_bin[sel] - _D_MIN, 0, len(d) - 1)
        sums = np.bincount(idx, weights=lightness[sel], minlength=len(d))
        counts = np.bincount(idx, minlength=len(d))
        profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        contrast, width = _rise_width(profile, d)
        gradient = 0.6 * abs(contrast) / width if np.isfinite(width) and width > 0 else 0.0
        abrupt = abs(contrast) >= MIN_EDGE_CONTRAST and width <= ABRUPT_MAX_RISE_PX and gradient >= ABRUPT_MIN_GRADIENT
        n_abrupt += int(abrupt)
        gradients.append(float(gradient))
        widths.append(float(width))
    return n_abrupt, tuple(gradients), tuple(widths)
