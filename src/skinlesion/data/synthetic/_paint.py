"""Painting a lesion: colour regions, texture, skin and the lesion-to-skin composite.

Textures are random fields drawn on a grid in the lesion frame (seeded by the spec), so rotating,
mirroring or shifting a spec moves its texture with it. Each colour layer thresholds its field at
the quantile that gives the requested coverage of the lesion.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

from skinlesion.data.synthetic._shape import LesionGeometry
from skinlesion.data.synthetic._spec import (
    COLOUR_RGB,
    DERMOSCOPIC_COLOURS,
    MAX_TONE,
    SHADE_STEP,
    ColourLayer,
    LesionSpec,
)

#: A colour is painted only where it covers at least this fraction of the lesion mask; smaller
#: regions are repainted with the lesion's dominant colour before anything is rendered.
MIN_COLOUR_FRACTION = 0.03

_PALETTE = np.array([COLOUR_RGB[c] for c in DERMOSCOPIC_COLOURS], dtype=np.float64)
_ERYTHEMA_RGB = np.array([222.0, 124.0, 124.0])


class _LesionGrid:
    """Random fields on a square grid in the lesion frame, sampled at chosen pixels.

    A field of smoothing ``sigma`` is drawn on a grid coarsened by up to ``sigma / 2`` (white
    noise there, Gaussian filtered, then bilinearly sampled), which keeps large-scale textures cheap.
    """

    def __init__(self, spec: LesionSpec, geo: LesionGeometry, where: np.ndarray) -> None:
        self.seed = spec.texture_seed
        self.half = int(math.ceil(geo.max_radius + spec.edge_width_px)) + 3
        self.coords = np.stack([geo.y[where] + self.half, geo.x[where] + self.half])

    def _field(self, key: int, sigmas: tuple[float, ...], weights: tuple[float, ...]) -> np.ndarray:
        step = max(1.0, min(sigmas) / 2.0)
        n = int(math.ceil((2 * self.half + 1) / step)) + 2
        white = np.random.default_rng([self.seed, key]).standard_normal((n, n)).astype(np.float32)
        grid = sum(w * ndimage.gaussian_filter(white, s / step, truncate=3.0) for s, w in zip(sigmas, weights))
        values = ndimage.map_coordinates(grid, self.coords / step, order=1, mode="nearest")
        sd = float(grid.std())
        return (values - float(grid.mean())) / (sd if sd > 0 else 1.0)

    def smooth(self, key: int, sigma: float) -> np.ndarray:
        """Gaussian-smoothed noise of unit standard deviation."""
        return self._field(key, (max(sigma, 0.5),), (1.0,))

    def bandpass(self, key: int, scale: float) -> np.ndarray:
        """Difference of Gaussians whose zero crossings form a maze of period ~``scale`` pixels."""
        return self._field(key, (max(scale / 4.0, 0.6), max(scale / 2.0, 1.2)), (1.0, -1.0))


def _layer_field(layer: ColourLayer, key: int, grid: _LesionGrid, geo: LesionGeometry, where: np.ndarray) -> np.ndarray:
    """A score per pixel; the layer paints the pixels with the highest scores."""
    s = layer.scale_px
    u = geo.rho[where] / np.maximum(geo.boundary[where], 1e-6)
    if layer.kind == "blotch":
        lean = (geo.x[where] * math.cos(layer.direction) + geo.y[where] * math.sin(layer.direction)) / geo.max_radius
        return grid.smooth(key, s / 2.0) + 3.0 * layer.eccentricity * lean
    if layer.kind == "centre":
        return -(u + 0.2 * grid.smooth(key, s / 2.0))
    if layer.kind == "periphery":
        return u + 0.2 * grid.smooth(key, s / 2.0)
    if layer.kind == "network":
        return -np.abs(grid.bandpass(key, s))
    if layer.kind == "globules":
        return grid.bandpass(key, s)
    if layer.kind == "lines":
        return -np.abs(grid.bandpass(key, s)) + 0.5 * grid.smooth(key + 50, 1.5 * s)
    if layer.kind == "streaks":
        n_spokes = max(6, round(math.pi * geo.max_radius / max(s, 1.0)))
        t = np.arctan2(geo.y[where], geo.x[where])
        return np.cos(n_spokes * t + 1.2 * grid.smooth(key, s)) + 4.0 * (u - 1.0)
    return np.ones(int(where.sum()))  # base


def paint_labels(spec: LesionSpec, geo: LesionGeometry, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour index (into :data:`DERMOSCOPIC_COLOURS`) and shade for every pixel of ``where``.

    ``where`` is the mask plus its fading rim. Region thresholds are quantiles over the mask.
    Colours left below :data:`MIN_COLOUR_FRACTION` of the mask are repainted with the dominant one,
    so every colour that is painted inside the mask covers at least that fraction.
    """
    grid = _LesionGrid(spec, geo, where)
    inside = geo.mask[where]
    labels = np.full(int(where.sum()), -1, dtype=np.int64)
    shade = np.zeros(labels.shape, dtype=np.float64)
    for key, layer in enumerate(spec.layers):
        score = _layer_field(layer, key, grid, geo, where)
        if layer.kind == "base" or layer.coverage >= 1.0:
            region = np.ones(labels.shape, dtype=bool)
        else:
            region = score >= np.quantile(score[inside], 1.0 - layer.coverage)
        labels[region] = DERMOSCOPIC_COLOURS.index(layer.colour)
        shade[region] = layer.shade
    n_col = len(DERMOSCOPIC_COLOURS)
    while True:
        counts = np.bincount(labels[inside], minlength=n_col)
        small = [c for c in range(n_col) if 0 < counts[c] < MIN_COLOUR_FRACTION * inside.sum()]
        if not small:
            break
        worst = min(small, key=lambda c: counts[c])
        moved = labels == worst
        labels[moved] = int(np.argmax(counts))
        shade[moved] = 0.0
    present = np.bincount(labels[inside], minlength=n_col) > 0
    stray = ~present[labels]  # rim pixels of a colour that is not in the mask
    labels[stray] = int(np.argmax(np.bincount(labels[inside], minlength=n_col)))
    return labels, shade


def lesion_rgb(
    spec: LesionSpec, geo: LesionGeometry, where: np.ndarray, labels: np.ndarray, shade: np.ndarray
) -> np.ndarray:
    """RGB of the painted pixels: the reference colour scaled by shading and mild texture."""
    grid = _LesionGrid(spec, geo, where)
    texture = 0.75 * grid.smooth(1000, 1.8) + 0.5 * grid.smooth(1001, 0.6)
    tone = np.clip(SHADE_STEP * shade + spec.texture_amplitude * texture, -MAX_TONE, MAX_TONE)
    return _PALETTE[labels] * (1.0 + tone)[:, None]


def coarse_noise(rng: np.random.Generator, size: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth noise (unit standard deviation) upsampled bilinearly from cells of ``cell_px``."""
    h, w = size
    ch, cw = max(2, int(h / cell_px) + 2), max(2, int(w / cell_px) + 2)
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    up = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
    sd = float(up.std())
    return (up - float(up.mean())) / np.float32(sd if sd > 0 else 1.0)


def skin_rgb(spec: LesionSpec, geo: LesionGeometry, size: tuple[int, int]) -> np.ndarray:
    """Skin of the spec's tone with smooth shading, fine grain, dermatoscope illumination and
    (for inflamed lesions) erythema fading with distance from the lesion."""
    h, w = size
    rng = np.random.default_rng([spec.texture_seed, 2000])
    grain = rng.standard_normal(size, dtype=np.float32)
    shading = 1.0 + 0.025 * coarse_noise(rng, size, max(h, w) / 5.0) + 0.018 * grain
    r2 = (((np.arange(h) - (h - 1) / 2) / (h / 2)) ** 2)[:, None]
    c2 = (((np.arange(w) - (w - 1) / 2) / (w / 2)) ** 2)[None, :]
    light = (1.04 - 0.06 * np.clip(r2 + c2, 0, 2)).astype(np.float32)
    skin = np.array(spec.skin_rgb, dtype=np.float32)[None, None, :] * (shading * light)[..., None]
    if spec.erythema > 0:
        outside = np.maximum(geo.rho - geo.boundary, 0.0).astype(np.float32)
        patchy = 0.75 + 0.25 * np.tanh(coarse_noise(rng, size, max(4.0, spec.radius_px / 2)))
        weight = 0.7 * spec.erythema * patchy * np.exp(-outside / (0.7 * spec.radius_px + 3.0))
        skin = skin * (1 - weight[..., None]) + _ERYTHEMA_RGB.astype(np.float32) * weight[..., None]
    return skin


def composite(
    spec: LesionSpec, geo: LesionGeometry, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float RGB image of lesion on skin, the colour-index map (-1 off the lesion) and the mask.

    Inside the mask the lesion is opaque; in a rim of ``edge_width_px`` outside it the lesion fades
    from half opacity to nothing, so the mask is where the lesion dominates.
    """
    outside = geo.rho - geo.boundary
    where = geo.mask | (outside < spec.edge_width_px)
    labels, shade = paint_labels(spec, geo, where)
    colours = lesion_rgb(spec, geo, where, labels, shade)
    image = skin_rgb(spec, geo, size)
    alpha = np.where(
        geo.mask[where], 1.0, 0.5 * np.clip(1.0 - outside[where] / max(spec.edge_width_px, 1e-6), 0.0, 1.0)
    )
    image[where] = image[where] * (1.0 - alpha[:, None]) + colours * alpha[:, None]
    label_map = np.full(size, -1, dtype=np.int64)
    label_map[where] = labels
    label_map[~geo.mask] = -1
    return image, label_map, geo.mask
