"""Acquisition artefacts drawn over a rendered lesion: hair, ruler marks, dermatoscope vignette.

They change pixels only; the lesion mask and its ground truth stay those of the lesion itself,
as a dermatologist's segmentation ignores hair and ruler marks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _blend(image: np.ndarray, cover: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return image * (1.0 - cover[..., None]) + colour[None, None, :] * cover[..., None]


def draw_hair(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark curved strands (quadratic Bezier curves, 1-2 px wide) crossing lesion and skin."""
    h, w = image.shape[:2]
    n_hair = int(rng.integers(4, 16))
    length = rng.uniform(0.4, 1.2, n_hair) * max(h, w)
    heading = rng.uniform(0, 2 * np.pi, n_hair)
    start = rng.uniform([-0.1 * h, -0.1 * w], [1.1 * h, 1.1 * w], (n_hair, 2))
    direction = np.stack([np.sin(heading), np.cos(heading)], 1)
    end = start + length[:, None] * direction
    bend = rng.uniform(-0.3, 0.3, n_hair)[:, None] * length[:, None] * np.stack([direction[:, 1], -direction[:, 0]], 1)
    control = (start + end) / 2 + bend
    t = np.linspace(0.0, 1.0, 2 * (h + w))[None, :, None]
    pts = (1 - t) ** 2 * start[:, None] + 2 * (1 - t) * t * control[:, None] + t**2 * end[:, None]
    thick = rng.random(n_hair) < 0.35
    cover = np.zeros((h, w), dtype=np.float64)
    for offsets, which in ((((0, 0),), np.ones(n_hair, bool)), (((1, 0), (0, 1)), thick)):
        for dr, dc in offsets:
            r = np.rint(pts[which, :, 0]).astype(int).ravel() + dr
            c = np.rint(pts[which, :, 1]).astype(int).ravel() + dc
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            cover[r[ok], c[ok]] = 1.0
    cover = np.clip(ndimage.gaussian_filter(cover, 0.45) * 1.5, 0.0, 0.92)
    colour = np.array([46.0, 34.0, 28.0]) * rng.uniform(0.5, 1.5)
    return _blend(image, cover, colour)


def draw_ruler(image: np.ndarray, rng: np.random.Generator, pixel_spacing_mm: float) -> np.ndarray:
    """Millimetre ticks (every 5th longer) along one image edge, as on dermoscopy rulers."""
    h, w = image.shape[:2]
    side = int(rng.integers(4))
    along, across = (w, h) if side in (0, 1) else (h, w)
    step = 1.0 / pixel_spacing_mm
    if step < 2.5:
        step *= 2
    offset = int(rng.integers(1, max(2, across // 30) + 1))
    positions = np.arange(rng.uniform(0, step), along, step)
    cover = np.zeros((across, along), dtype=np.float64)
    cover[offset, :] = 1.0
    unit = max(2, across // 40)
    for i, p in enumerate(positions):
        cover[offset : offset + (2 * unit if i % 5 == 0 else unit) + 1, int(p)] = 1.0
    if side in (1, 3):
        cover = cover[::-1]
    if side in (2, 3):
        cover = cover.T
    colour = np.array([60.0, 60.0, 66.0]) * rng.uniform(0.6, 1.3)
    return _blend(image, 0.8 * cover, colour)


def draw_vignette(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The dark round frame of a contact dermatoscope: black corners, darker rim inside."""
    h, w = image.shape[:2]
    diag = float(np.hypot(h, w))
    centre = np.array([h / 2, w / 2]) + rng.uniform(-0.03, 0.03, 2) * np.array([h, w])
    radius = rng.uniform(0.38, 0.47) * diag
    soft = 0.02 * diag + 0.5
    rr, cc = np.mgrid[0:h, 0:w]
    d = np.hypot(rr - centre[0], cc - centre[1])
    inside = np.clip((radius - d) / soft + 0.5, 0.0, 1.0)
    rim = 1.0 - 0.3 * np.clip((d - (radius - 0.12 * diag)) / (0.12 * diag), 0.0, 1.0)
    dark = np.array([14.0, 11.0, 11.0]) * rng.uniform(0.6, 1.6)
    return image * (inside * rim)[..., None] + dark[None, None, :] * (1.0 - inside)[..., None]
