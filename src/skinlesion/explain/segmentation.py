"""Classical lesion segmentation of dermoscopy images (no learning), robust to common artefacts.

Pipeline of :func:`segment_lesion` (each step after the cited method, simplified):

1. Hair and ruler marks: a morphological black-hat of the luminance finds thin dark lines, and
   the long straight ones (openings by 21-px line elements in 12 directions) are inpainted from the
   surrounding pixels (after DullRazor, Lee et al. 1997, "DullRazor: a software approach to hair
   removal from images"). After the first segmentation only lines reaching the skin count as
   hair, so streaks and network inside the lesion are kept.
2. Field of view: near-black regions connected to the image corners (the round frame of a contact
   dermatoscope) are excluded and a circle is fitted to their border by RANSAC; pixels near or
   outside that circle are never lesion. The radial fall-off of illumination inside the frame is
   divided out.
3. A "lesion-ness" channel: the CIELAB colour difference (Delta E 1976) of each smoothed pixel
   from the local skin colour, a quadratic surface fitted to the outer part of the field of view
   (then, in a second pass, to everything outside the first mask).
4. Otsu's threshold (Otsu 1979) on that channel, grown by hysteresis into fainter connected parts
   (white or pink areas), then the lesion component (large, central, not cut by the image edge;
   Celebi et al. 2009, "Lesion border detection in dermoscopy images") with holes filled.
5. Border refinement by a local alpha matte: each pixel near the border is written as a mix of the
   local skin and the local lesion colour and kept when the lesion share is at least
   :data:`ALPHA_CUT` (the synthetic generator's mask boundary is where the lesion is opaque; its
   fading rim is at most half lesion). Thin appendages (hair stuck to the lesion) are cut last.

Boxes are ``(top, bottom, left, right)`` in pixel indices with ``bottom``/``right`` exclusive
(numpy slicing ``image[top:bottom, left:right]``), the convention of ``HAM10000_metadata_ext.csv``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk

from skinlesion.explain._abcde_artefacts import (
    field_of_view,
    hair_lines,
    radial_flatten,
    remove_hair,
    remove_lines,
)
from skinlesion.explain._abcde_checks import check_image, check_mask

__all__ = [
    "QUALITY_FLAGS",
    "SegmentationResult",
    "box_iou",
    "check_image",
    "check_mask",
    "field_of_view",
    "mask_bbox",
    "mask_iou",
    "remove_hair",
    "segment_lesion",
]

#: Otsu class means closer than this (Delta E) flag the segmentation as low contrast ...
LOW_CONTRAST_DELTA_E = 8.0
#: ... and closer than this (about the just-noticeable colour difference) mean no lesion at all.
MIN_DETECTABLE_DELTA_E = 3.0
#: Hysteresis: pixels above this fraction of the Otsu threshold (and above the skin noise) join
#: the lesion when connected to it (faint white or pink parts of the lesion).
LOW_FRACTION = 0.3
#: Border pixels are lesion when their lesion share (alpha, skin = 0, lesion = 1) reaches this.
ALPHA_CUT = 0.65
#: The matte decides a border pixel only where local lesion and skin colours differ by this (Delta E).
MIN_MATTE_DELTA_E = 5.0

QUALITY_FLAGS: tuple[str, ...] = ("ok", "low_contrast", "touches_border", "not_found")


@dataclass(frozen=True)
class SegmentationResult:
    """A lesion mask with how it was obtained and how far to trust it.

    Attributes:
        mask: bool (H, W), the lesion.
        bbox: ``(top, bottom, left, right)``, bottom/right exclusive; ``(0, 0, 0, 0)`` when empty.
        quality: one of :data:`QUALITY_FLAGS`: ``ok``; ``low_contrast`` (lesion and skin barely
            differ, the border is uncertain); ``touches_border`` (the lesion reaches the image or
            field-of-view edge, so size measurements are lower bounds); ``not_found`` (empty mask:
            no region differs from the skin by :data:`MIN_DETECTABLE_DELTA_E`).
        method: short description of the pipeline.
        field_of_view: bool (H, W), the pixels inside the dermatoscope frame.
        hair_mask: bool (H, W), the pixels replaced as hair or ruler marks.
        skin_rgb: estimated skin colour (0-255 RGB).
        diagnostics: threshold, class contrast, component count and other numbers.
    """

    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    quality: str
    method: str
    field_of_view: np.ndarray
    hair_mask: np.ndarray
    skin_rgb: tuple[float, float, float]
    diagnostics: dict = field(default_factory=dict)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the mask's pixels, bottom/right exclusive; zeros when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(top, bottom, left, right)`` boxes (bottom/right exclusive).

    Raises:
        ValueError: a box that is not four numbers with ``top <= bottom`` and ``left <= right``.
    """
    for name, box in (("a", a), ("b", b)):
        if len(box) != 4 or box[0] > box[1] or box[2] > box[3]:
            raise ValueError(
                f"The '{name}' parameter must be a box (top, bottom, left, right) with top <= bottom and "
                f"left <= right. Got {tuple(box)!r} instead."
            )
    inter_h = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    inter_w = max(0.0, min(a[3], b[3]) - max(a[2], b[2]))
    inter = inter_h * inter_w
    union = (a[1] - a[0]) * (a[3] - a[2]) + (b[1] - b[0]) * (b[3] - b[2]) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"The masks must have the same shape. Got {a.shape} and {b.shape} instead.")
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 0.0


@functools.lru_cache(maxsize=8)
def _quadratic_design(h: int, w: int) -> np.ndarray:
    """Columns 1, x, y, x^2, xy, y^2 over the pixel grid (normalised coordinates), read-only."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = (y - h / 2) / h, (x - w / 2) / w
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    design.flags.writeable = False
    return design


def _fit(a: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares by the (ridge-stabilised) normal equations; 6 unknowns per channel."""
    return np.linalg.solve(a.T @ a + 1e-9 * np.eye(a.shape[1]), a.T @ target)


def _background(rgb: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Smooth skin colour at every pixel: a per-channel quadratic surface fitted to ``skin`` pixels
    (one robust refit without the 10% worst residuals)."""
    h, w = skin.shape
    design = _quadratic_design(h, w)
    rows = np.flatnonzero(skin.ravel())
    if rows.size < 50:
        return np.broadcast_to(np.median(rgb.reshape(-1, 3), axis=0), rgb.shape).copy()
    rows = rows[:: max(1, rows.size // 4000)]
    a, target = design[rows], rgb.reshape(-1, 3)[rows].astype(np.float64)
    coef = _fit(a, target)
    resid = np.abs(target - a @ coef).sum(axis=1)
    keep = resid <= np.quantile(resid, 0.9)
    coef = _fit(a[keep], target[keep])
    return (design @ coef).reshape(h, w, 3).clip(0.0, 1.0).astype(rgb.dtype)


def _pick_component(mask: np.ndarray, fov: np.ndarray, channel: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The lesion among the connected components: the one with the highest
    ``sum(Delta E) * exp(-(d / r)^2)``, with ``d`` the distance of its centroid from the field-of-view
    centre and ``r`` half the smaller image side; a component touching the image edge counts a
    third as much (a lesion is usually photographed whole and centred)."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask, n
    h, w = mask.shape
    centre = np.array(ndimage.center_of_mass(fov)) if fov.any() else np.array([h / 2, w / 2])
    weights = np.ones(mask.shape) if channel is None else channel
    mass = ndimage.sum_labels(weights, labels, np.arange(n + 1))
    edge_ids = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    best, best_score = 0, -1.0
    for region in regionprops(labels):
        d = float(np.hypot(*(np.array(region.centroid) - centre)))
        score = float(mass[region.label]) * np.exp(-((d / (0.5 * min(h, w))) ** 2))
        if region.label in edge_ids:
            score /= 3.0
        if score > best_score:
            best, best_score = region.label, score
    return labels == best, n


def _nearest_colour(rgb: np.ndarray, region: np.ndarray, sigma: float) -> np.ndarray:
    """At every pixel, the colour (Gaussian-smoothed within ``region``) of the nearest ``region`` pixel."""
    weight = ndimage.gaussian_filter(region.astype(np.float32), sigma)
    local = np.stack([ndimage.gaussian_filter(rgb[..., c] * region, sigma) for c in range(3)], -1)
    local /= np.maximum(weight, 1e-6)[..., None]
    idx = ndimage.distance_transform_edt(~region, return_distances=False, return_indices=True)
    return local[idx[0], idx[1]]


def _refine_alpha(
    rgb: np.ndarray,
    mask: np.ndarray,
    fov: np.ndarray,
    *,
    core_depth: tuple[float, float] = (1.5, 3.0),
    cut: float = ALPHA_CUT,
    iterations: int = 3,
    lab: bool = True,
) -> np.ndarray:
    """Re-decide the pixels near the border by their lesion share (a local alpha matte).

    A pixel ``p`` within 4 px inside or 2 px outside the border is written ``p = s + alpha (c - s)``
    in CIELAB (least squares), with ``c`` the colour of the nearest mask pixel ``core_depth`` px
    deep and ``s`` that of the nearest pixel 2.5-6 px outside (so a halo of erythema counts as
    skin); it is lesion when ``alpha >= cut``. Where ``c`` and ``s`` differ by less than :data:`MIN_MATTE_DELTA_E` the
    pixel keeps its label. Works on the mask's bounding box plus a 12 px margin.
    """
    top, bottom, left, right = mask_bbox(mask)
    h, w = mask.shape
    rows = slice(max(0, top - 12), min(h, bottom + 12))
    cols = slice(max(0, left - 12), min(w, right + 12))
    out = np.zeros_like(mask)
    out[rows, cols] = _refine_crop(rgb[rows, cols], mask[rows, cols], fov[rows, cols], core_depth, cut, iterations, lab)
    return out


def _refine_crop(
    rgb: np.ndarray,
    mask: np.ndarray,
    fov: np.ndarray,
    core_depth: tuple[float, float],
    cut: float,
    iterations: int,
    lab: bool,
) -> np.ndarray:
    to_space = rgb2lab if lab else (lambda x: 100.0 * x)  # RGB scaled so Delta thresholds are comparable
    for _ in range(iterations):
        depth_in = ndimage.distance_transform_edt(mask)
        depth_out = ndimage.distance_transform_edt(~mask)
        core = (depth_in >= core_depth[0]) & (depth_in <= core_depth[1])
        shell = (depth_out >= 2.5) & (depth_out <= 6.0) & fov
        if core.sum() < 10 or shell.sum() < 10:
            return mask
        band = ((depth_in > 0) & (depth_in <= 4.0)) | ((depth_out > 0) & (depth_out <= 2.0) & fov)
        p = to_space(rgb[band][None])[0]
        c = to_space(_nearest_colour(rgb, core, 0.7)[band][None])[0]
        s = to_space(_nearest_colour(rgb, shell, 1.0)[band][None])[0]
        cs = c - s
        norm2 = (cs * cs).sum(-1)
        alpha = ((p - s) * cs).sum(-1) / np.maximum(norm2, 1e-6)
        decided = norm2 >= MIN_MATTE_DELTA_E**2
        new = mask.copy()
        new[band] = np.where(decided, alpha >= cut, mask[band])
        new = ndimage.binary_fill_holes(new)
        if np.array_equal(new, mask):
            break
        mask = new
    return mask


def _coarse_segmentation(flat: np.ndarray, fov: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Delta E from a fitted skin background, Otsu threshold grown by hysteresis, lesion component
    with holes filled; run twice, the second time with the skin re-estimated outside the first
    mask. Returns ``(mask, skin_pixels, diagnostics)``."""
    h, w = fov.shape
    smooth = np.stack([ndimage.gaussian_filter(flat[..., c], 1.0) for c in range(3)], axis=-1)
    lab = rgb2lab(smooth)
    rr, cc = np.mgrid[0:h, 0:w]
    centre = np.array(ndimage.center_of_mass(fov))
    dist = np.hypot(rr - centre[0], cc - centre[1])
    ring = fov & (dist >= np.quantile(dist[fov], 0.7))
    skin, mask = ring, np.zeros((h, w), bool)
    info: dict = {}
    for _ in range(2):
        channel = np.linalg.norm(lab - rgb2lab(_background(smooth, skin)), axis=-1)
        values = channel[fov]
        threshold = float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values.max()) + 1.0
        above = values > threshold
        contrast = float(values[above].mean() - values[~above].mean()) if above.any() and (~above).any() else 0.0
        skin_values = channel[skin] if skin.any() else values[~above]
        med = float(np.median(skin_values))
        noise_floor = med + 8.0 * 1.4826 * float(np.median(np.abs(skin_values - med)))
        low = min(threshold, max(5.0, noise_floor, LOW_FRACTION * threshold))
        strong = ndimage.binary_opening((channel > threshold) & fov, disk(1))
        grown = ndimage.binary_propagation(strong, mask=(channel > low) & fov)
        grown = ndimage.binary_closing(grown, disk(2), border_value=0) & fov
        mask, n_components = _pick_component(grown, fov, channel)
        mask = ndimage.binary_fill_holes(mask)
        info = {"threshold_delta_e": threshold, "low_threshold_delta_e": low,
                "class_contrast_delta_e": contrast, "n_components": int(n_components)}  # fmt: skip
        if not mask.any():
            break
        skin = fov & ~ndimage.binary_dilation(mask, disk(4))
        if skin.sum() < 0.05 * fov.sum():
            skin = ring & ~mask if (ring & ~mask).sum() > 50 else ring
    return mask, skin, info


def segment_lesion(image: np.ndarray) -> SegmentationResult:
    """Segment the lesion in a dermoscopy image (see the module docstring for the pipeline).

    Args:
        image: uint8 RGB array (H, W, 3).

    Returns:
        :class:`SegmentationResult`; its ``quality`` says when not to trust the mask.

    Raises:
        ValueError: ``image`` is not a uint8 (H, W, 3) array.
    """
    rgb = check_image(image).astype(np.float32) / 255.0
    lines = hair_lines(rgb)
    coarse_clean, _ = remove_lines(rgb, lines, None)
    fov, fov_info = field_of_view(coarse_clean)
    mask, skin, info = _coarse_segmentation(radial_flatten(coarse_clean, fov, fov_info["circle"]), fov)
    if info["class_contrast_delta_e"] < MIN_DETECTABLE_DELTA_E:
        mask = np.zeros_like(mask)  # nothing differs visibly from the skin
    clean, hair = remove_lines(rgb, lines, mask if mask.any() else None)
    if mask.any():
        flat = radial_flatten(clean, fov, fov_info["circle"])
        mask = _refine_alpha(flat, mask, fov, core_depth=(3.0, 6.0), cut=0.5, iterations=5)  # peel a wide rim
        mask = _refine_alpha(flat, mask, fov, iterations=5)
        mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, disk(2)))
        mask = _pick_component(mask, fov)[0]
        body = ndimage.binary_opening(mask, disk(3))
        if body.any():  # cut thin appendages (hair stuck to the lesion): keep pixels near the body
            mask &= ndimage.binary_dilation(_pick_component(body, fov)[0], disk(3))
            mask = _pick_component(mask, fov)[0]
    if not mask.any():
        quality = "not_found"
    elif (mask & ~ndimage.binary_erosion(fov, border_value=0)).any():
        quality = "touches_border"
    elif info["class_contrast_delta_e"] < LOW_CONTRAST_DELTA_E:
        quality = "low_contrast"
    else:
        quality = "ok"
    skin_rgb = tuple(float(v) for v in 255.0 * np.median(clean[skin], axis=0)) if skin.any() else (0.0, 0.0, 0.0)
    return SegmentationResult(
        mask=mask,
        bbox=mask_bbox(mask),
        quality=quality,
        method="dullrazor+fov-circle+deltaE-otsu-hysteresis+alpha-matte",
        field_of_view=fov,
        hair_mask=hair,
        skin_rgb=skin_rgb,  # type: ignore[arg-type]
        diagnostics={**info, "hair_fraction": float(hair.mean()),
                     "field_of_view_fraction": float(fov.mean()), **fov_info},  # fmt: skip
    )
