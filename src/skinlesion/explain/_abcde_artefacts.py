"""Dermoscopy artefacts the segmentation must ignore: hair and ruler marks (DullRazor-like, Lee et
al. 1997), the dark round frame of a contact dermatoscope and its radial illumination fall-off."""

from __future__ import annotations

import functools

import cv2
import numpy as np
from scipy import ndimage
from skimage.measure import CircleModel, label, ransac
from skimage.morphology import black_tophat, disk

from skinlesion.explain._abcde_checks import check_image

#: Black-hat response (luminance, 0-1) above which a thin dark line is a hair candidate.
HAIR_CONTRAST = 0.07
#: A hair candidate pixel is kept when a straight segment this long (pixels) fits in the candidates
#: through it (a morphological opening with line elements in 12 directions): hairs are long and
#: nearly straight, the meshes of a pigment network and dots are not.
HAIR_MIN_LENGTH = 21
#: With a lesion mask, a line is hair only when this many of its pixels lie on the skin.
HAIR_MIN_OUTSIDE = 10
#: ... and at least this fraction of them (a pigment network leaking past a tight mask is not hair).
HAIR_MIN_OUTSIDE_FRACTION = 0.3
#: Luminance (0-1) below which a corner-connected region is outside the field of view.
DARK_FRAME = 0.12


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=rgb.dtype)


@functools.lru_cache(maxsize=4)
def _line_footprints(length: int, n_angles: int = 12) -> tuple[np.ndarray, ...]:
    """One-pixel-wide straight line elements of ``length`` pixels in ``n_angles`` directions."""
    half = length // 2
    steps = np.linspace(-half, half, 2 * length)
    out = []
    for theta in np.linspace(0.0, np.pi, n_angles, endpoint=False):
        fp = np.zeros((2 * half + 1, 2 * half + 1), bool)
        fp[np.rint(half + steps * np.sin(theta)).astype(int), np.rint(half + steps * np.cos(theta)).astype(int)] = True
        out.append(fp)
    return tuple(out)


def _open_by_lines(mask: np.ndarray, footprints: tuple[np.ndarray, ...]) -> np.ndarray:
    """Union of the binary openings of ``mask`` by each footprint, with OpenCV (about 35x faster than
    ``scipy.ndimage.binary_opening`` here). Pixels outside the image count as background in both the
    erosion and the dilation, as in scipy; the footprints are point-symmetric, so OpenCV's unreflected
    dilation equals scipy's: the result is the same."""
    src = mask.astype(np.uint8)
    out = np.zeros_like(src)
    for footprint in footprints:
        kernel = footprint.astype(np.uint8)
        eroded = cv2.erode(src, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        out |= cv2.dilate(eroded, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(bool)


def hair_lines(rgb: np.ndarray) -> np.ndarray:
    """Labelled hair and ruler lines (0 = none): black-hat responses (thin dark lines) that contain
    a straight segment of :data:`HAIR_MIN_LENGTH` px (union of openings by line elements)."""
    gray = ndimage.gaussian_filter(_luminance(rgb), 0.5)
    candidates = black_tophat(gray, disk(3)) > HAIR_CONTRAST
    candidates &= ~ndimage.binary_dilation(_dark_frame(rgb), disk(3))  # cut hairs at the frame
    lines = _open_by_lines(candidates, _line_footprints(HAIR_MIN_LENGTH))
    lines = ndimage.binary_propagation(lines, mask=candidates & ndimage.binary_dilation(lines, disk(1)))
    return label(lines, connectivity=2)


def remove_hair(image: np.ndarray, lesion_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Find hair and ruler marks (thin, long dark lines: a black-hat, DullRazor-like) and inpaint
    them from the surrounding pixels.

    With ``lesion_mask``, a line counts as hair only when at least :data:`HAIR_MIN_OUTSIDE` of its
    pixels, and :data:`HAIR_MIN_OUTSIDE_FRACTION` of them, lie on the skin (more than 3 px outside
    the lesion): dark lines wholly inside a lesion are more likely streaks or network than hair,
    and are kept. Without it every line is removed (what the coarse segmentation needs).

    Returns the cleaned float RGB image (0-1) and the boolean mask of the replaced pixels.
    """
    rgb = check_image(image).astype(np.float32) / 255.0
    return remove_lines(rgb, hair_lines(rgb), lesion_mask)


def remove_lines(
    rgb: np.ndarray, labels: np.ndarray, lesion_mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`remove_hair` with the labelled lines (:func:`hair_lines` of ``rgb``) given."""
    if lesion_mask is not None and labels.any():
        outside = ~ndimage.binary_dilation(np.asarray(lesion_mask, bool), disk(3))
        index = np.arange(labels.max() + 1)
        n_out = ndimage.sum_labels(outside, labels, index)
        n_all = np.maximum(ndimage.sum_labels(np.ones_like(outside), labels, index), 1)
        on_skin = (n_out >= HAIR_MIN_OUTSIDE) & (n_out >= HAIR_MIN_OUTSIDE_FRACTION * n_all)
        on_skin[0] = False
        labels = np.where(on_skin[labels], labels, 0)
    hair = labels > 0
    if not hair.any():
        return rgb, hair
    hair = ndimage.binary_dilation(hair, disk(1))
    return _inpaint(rgb, hair), hair


def _inpaint(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill ``hole`` pixels with a Gaussian-weighted mean of the nearby non-hole pixels
    (normalised convolution; a wider kernel where a narrow one finds no support)."""
    out = rgb.copy()
    todo = hole.copy()
    keep = (~hole).astype(np.float32)
    for sigma in (2.0, 5.0, 12.0):
        weight = ndimage.gaussian_filter(keep, sigma)
        ok = todo & (weight > 0.05)
        for c in range(3):
            filled = ndimage.gaussian_filter(rgb[..., c] * keep, sigma) / np.maximum(weight, 1e-6)
            out[..., c][ok] = filled[ok]
        todo &= ~ok
        if not todo.any():
            break
    return out


def _dark_frame(rgb: np.ndarray) -> np.ndarray:
    """Near-black regions (luminance below :data:`DARK_FRAME`) connected to an image corner."""
    h, w = rgb.shape[:2]
    dark = ndimage.gaussian_filter(_luminance(rgb), 1.0) < DARK_FRAME
    labels = label(dark, connectivity=1)
    corner_ids = {labels[r, c] for r in (0, h - 1) for c in (0, w - 1)} - {0}
    return np.isin(labels, list(corner_ids)) if corner_ids else np.zeros((h, w), bool)


def field_of_view(rgb: np.ndarray) -> tuple[np.ndarray, dict]:
    """Pixels inside the dermatoscope's round frame (all pixels when there is no dark frame).

    ``rgb`` is float RGB in 0-1. Near-black regions connected to an image corner are outside; when
    they are large enough a circle is fitted (RANSAC) to their inner border and the field of view is
    that circle shrunk by 2% of the image diagonal.
    """
    h, w = rgb.shape[:2]
    outside = _dark_frame(rgb)
    info: dict = {"frame_fraction": float(outside.mean()), "circle": None}
    if outside.mean() < 0.005:
        return np.ones((h, w), bool), info
    edge = outside & ~ndimage.binary_erosion(outside, border_value=1)
    edge[[0, -1], :] = False
    edge[:, [0, -1]] = False
    points = np.column_stack(np.nonzero(edge)).astype(np.float64)
    diag = float(np.hypot(h, w))
    fov = ~ndimage.binary_dilation(outside, disk(2))
    if len(points) >= 10:
        model, inliers = ransac(points, CircleModel, min_samples=3, residual_threshold=1.5, max_trials=200, rng=0)
        if model is not None and inliers is not None and inliers.sum() >= 0.5 * len(points):
            (cr, cc), radius = model.center, model.radius
            if 0.25 * min(h, w) < radius < diag and 0 <= cr < h and 0 <= cc < w:
                rr, col = np.mgrid[0:h, 0:w]
                circle = np.hypot(rr - cr, col - cc) <= radius - 0.02 * diag
                fov &= circle
                info["circle"] = (float(cr), float(cc), float(radius))
    return fov, info


def radial_flatten(rgb: np.ndarray, fov: np.ndarray, circle: tuple[float, float, float] | None) -> np.ndarray:
    """Divide out the radial illumination fall-off towards a dermatoscope frame: the median
    luminance of field-of-view pixels in 2-px rings around the fitted circle's centre, relative to
    the inner 60% of the radius, made non-increasing outwards."""
    if circle is None:
        return rgb
    h, w = fov.shape
    cr, cc, radius = circle
    rr, col = np.mgrid[0:h, 0:w]
    dist = np.hypot(rr - cr, col - cc)
    lum = _luminance(rgb)
    bins = (dist / 2.0).astype(int)
    n_bins = int(bins[fov].max()) + 1
    inner = fov & (dist <= 0.6 * radius)
    if inner.sum() < 50:
        return rgb
    ref = float(np.median(lum[inner]))
    profile = np.ones(n_bins)
    for b in range(int(0.6 * radius / 2.0), n_bins):
        ring = fov & (bins == b)
        if ring.sum() >= 20:
            profile[b] = float(np.median(lum[ring])) / max(ref, 1e-6)
    profile = np.clip(np.minimum.accumulate(np.minimum(profile, 1.0)), 0.3, 1.0)
    gain = 1.0 / profile[np.minimum(bins, n_bins - 1)]
    return np.clip(rgb * np.where(fov, gain, 1.0)[..., None], 0.0, 1.0)
