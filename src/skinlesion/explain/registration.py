"""Register a follow-up image of a lesion onto the first one (rotation, translation, scale).

:func:`register_pair` finds the similarity transform that maps the *after* image's pixels onto the
*before* image's, by intensity alone (no segmentation), so a failed segmentation cannot mislead it:

1. Both images are reduced to a band-passed lightness channel (CIELAB L*, difference of Gaussians):
   lighting gradients, vignetting and overall brightness differences between the visits drop out,
   the lesion's outline and inner structure stay.
2. Coarse search on small copies (longer side :data:`COARSE_SIDE` px): every rotation in
   :data:`COARSE_STEP_DEG` steps and, when the scale is not fixed, every scale on a log grid over
   :data:`SCALE_RANGE`; for each, the best translation by FFT cross-correlation and its normalised
   cross-correlation (NCC) over the overlap. The candidates with the highest NCC go on.
3. Refinement of rotation, translation (and scale) by maximising the NCC at working resolution
   (Powell's method; Lewis 1995, "Fast normalized cross-correlation", for the measure).

The scale is *fixed* when both pixel spacings are known (``scale = after_spacing / before_spacing``:
one after-pixel covers that many before-pixels), because a lesion that grew must not be "registered
away"; without spacings it is *estimated* and is then an apparent magnification ratio: zoom and
growth cannot be told apart. The fit is reported as the NCC after registration (and before, for
the unregistered images when they have the same size) and the fraction of the before image that the
registered after image covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize

from skinlesion.explain._abcde_artefacts import field_of_view, remove_hair
from skinlesion.explain._abcde_checks import check_image

__all__ = ["COARSE_SIDE", "COARSE_STEP_DEG", "SCALE_RANGE", "WORK_SIDE", "Registration", "register_pair", "warp_onto"]

#: Longer side (px) of the copies the coarse search runs on ...
COARSE_SIDE = 64
#: ... and of the copies the refinement and the reported NCC use.
WORK_SIDE = 200
#: Rotation step of the coarse search (degrees; every angle is tried: follow-up photos can be turned).
COARSE_STEP_DEG = 10.0
#: Scales tried when the scale is estimated (apparent magnification of after relative to before).
SCALE_RANGE = (1 / 3, 3.0)
_SCALE_STEPS = 19
_CANDIDATES = 3
#: The band-pass keeps structures between 1/200 and 1/16 of the longer side.
BAND_HIGH = 16.0
#: A registered pair must share at least this fraction of the smaller of the two fields of view to be scored.
MIN_OVERLAP = 0.3


@dataclass(frozen=True)
class Registration:
    """A similarity transform from *after* pixel coordinates to *before* pixel coordinates.

    Attributes:
        matrix: 3x3 homogeneous matrix acting on ``(x, y, 1) = (col, row, 1)``, scikit-image's convention.
        rotation_deg: counter-clockwise rotation (image axes: x right, y down) applied to the after image.
        scale: before-pixels per after-pixel.
        translation_px: ``(dx, dy)`` in before pixels.
        scale_source: ``pixel spacings`` (fixed by the spacings), ``assumed equal`` (fixed at 1) or ``estimated``.
        ncc: normalised cross-correlation of the band-passed lightness over the overlap, after registration.
        ncc_unregistered: the same for the images as given (same size only; else None).
        overlap: the area both registered images show, as a fraction of the smaller of the two (in
            before pixels: a zoomed-in after image lying wholly inside the before image overlaps 1).
    """

    matrix: np.ndarray
    rotation_deg: float
    scale: float
    translation_px: tuple[float, float]
    scale_source: str
    ncc: float
    ncc_unregistered: float | None
    overlap: float

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        return {
            "method": "similarity transform maximising the normalised cross-correlation of band-passed lightness "
            f"(coarse search over all rotations{'' if self.scale_source != 'estimated' else ' and scales'}, Powell refinement)",
            "rotation_deg": round(self.rotation_deg, 3),
            "scale": round(self.scale, 5),
            "translation_px": [round(v, 3) for v in self.translation_px],
            "scale_source": self.scale_source,
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
            "ncc": round(self.ncc, 4),
            "ncc_unregistered": None if self.ncc_unregistered is None else round(self.ncc_unregistered, 4),
            "overlap": round(self.overlap, 4),
        }


def _similarity(theta_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    t = math.radians(theta_deg)
    c, s = scale * math.cos(t), scale * math.sin(t)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def _about_centres(theta_deg: float, scale: float, src_centre: np.ndarray, dst_centre: np.ndarray) -> np.ndarray:
    """Rotate and scale about ``src_centre`` and put it on ``dst_centre`` ((x, y) each)."""
    m = _similarity(theta_deg, scale, 0.0, 0.0)
    m[:2, 2] = dst_centre - m[:2, :2] @ src_centre
    return m


class _View:
    """A registration channel, NaN where it is not valid (outside the image or the field of view)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.valid = np.isfinite(values)
        self.shape: tuple[int, int] = values.shape  # type: ignore[assignment]

    @classmethod
    def of(cls, image: np.ndarray) -> _View:
        """Band-passed lightness (unit variance inside the field of view) of the hair-free image; a
        dermatoscope's dark frame is fixed to the camera, not to the skin, so it is left out."""
        from skimage.color import rgb2lab

        clean, _ = remove_hair(image)
        fov, _ = field_of_view(clean)
        light = rgb2lab(clean)[..., 0]
        if not fov.all() and fov.any():
            light = np.where(fov, light, float(np.median(light[fov])))
        side = max(light.shape)
        band = ndimage.gaussian_filter(light, side / 200.0) - ndimage.gaussian_filter(light, side / BAND_HIGH)
        inside = band[fov] if fov.sum() > 16 else band.ravel()
        band = (band - inside.mean()) / (inside.std() + 1e-6)
        return cls(np.where(fov, band, np.nan).astype(np.float32))

    def resampled(self, factor: float) -> _View:
        if abs(factor - 1.0) < 1e-9:
            return self
        shape = tuple(max(8, round(n * factor)) for n in self.shape)
        zoom = (shape[0] / self.shape[0], shape[1] / self.shape[1])
        sigma = max(0.0, (1.0 / factor - 1.0) / 2.0)  # anti-aliasing before shrinking
        filled = np.where(self.valid, self.values, 0.0)
        smooth = ndimage.gaussian_filter(filled, sigma) if sigma > 0 else filled
        values = ndimage.zoom(smooth, zoom, order=1, grid_mode=True, mode="nearest")
        valid = ndimage.zoom(self.valid.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest") > 0.99
        return _View(np.where(valid, values, np.nan).astype(np.float32))

    def warped(self, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The values on a grid of ``shape`` through ``matrix``, NaN where not valid."""
        return _warp(self.values, matrix, shape, 1, cval=np.nan)

    def ncc(self, other: np.ndarray) -> tuple[float, int]:
        """NCC with ``other`` (same shape, NaN where not valid) over both valid regions, and its size."""
        both = self.valid & np.isfinite(other)
        return _ncc(self.values, other, both), int(both.sum())

    def score(self, moving: _View, matrix: np.ndarray) -> tuple[float, float]:
        """NCC of ``moving`` registered by ``matrix`` with this view over both valid regions, and the
        shared area as a fraction of the smaller view (``moving``'s area scaled by ``matrix``)."""
        ncc, n = self.ncc(moving.warped(matrix, self.shape))
        return ncc, self._overlap(n, moving, matrix)

    def _overlap(self, n: int, moving: _View, matrix: np.ndarray) -> float:
        smaller = min(float(self.valid.sum()), float(moving.valid.sum()) * abs(np.linalg.det(matrix[:2, :2])))
        return min(1.0, n / max(smaller, 1.0))


def _warp(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], order: int = 1, cval: float = 0.0) -> np.ndarray:
    """``image`` (after) resampled on the before grid of ``shape`` through ``matrix`` (after -> before),
    ``cval`` outside it."""
    inv = np.linalg.inv(matrix)
    a, offset = inv[:2, :2][::-1, ::-1], inv[:2, 2][::-1]  # ndimage works in (row, col)
    return ndimage.affine_transform(image, a, offset=offset, output_shape=shape, order=order, mode="constant", cval=cval)


def _ncc(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` over ``valid`` (-1 below 64 pixels)."""
    if valid.sum() < 64:
        return -1.0
    x, y = a[valid], b[valid]
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``image`` moved by whole pixels (dx right, dy down), NaN where nothing moved in."""
    out = np.full_like(image, np.nan)
    h, w = image.shape
    src = image[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _best_shift(ref_fft: np.ndarray, moving: np.ndarray, pad: tuple[int, int]) -> tuple[float, float]:
    """Translation (dx, dy) that best aligns ``moving`` with the reference (plain FFT cross-correlation)."""
    mov = np.fft.rfft2(moving, s=pad)
    xc = np.fft.irfft2(ref_fft * np.conj(mov), s=pad)
    r, c = np.unravel_index(int(np.argmax(xc)), xc.shape)
    dy = r if r <= pad[0] // 2 else r - pad[0]
    dx = c if c <= pad[1] // 2 else c - pad[1]
    return float(dx), float(dy)


def _centre(shape: tuple[int, ...]) -> np.ndarray:
    return np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])


def _coarse(ref: _View, mov: _View, scales: list[float]) -> list[tuple[float, np.ndarray]]:
    """(NCC, matrix) of the best translation for every rotation and scale, best first."""
    pad = (2 * ref.shape[0], 2 * ref.shape[1])
    ref_fft = np.fft.rfft2(np.nan_to_num(ref.values), s=pad)
    scored = []
    for scale in scales:
        for theta in np.arange(0.0, 360.0, COARSE_STEP_DEG):
            m = _about_centres(float(theta), scale, _centre(mov.shape), _centre(ref.shape))
            warped = mov.warped(m, ref.shape)
            dx, dy = _best_shift(ref_fft, np.nan_to_num(warped), pad)
            if max(abs(dx), abs(dy)) >= max(ref.shape):
                continue
            ncc, n = ref.ncc(_shifted(warped, int(dx), int(dy)))
            m = _similarity(0.0, 1.0, dx, dy) @ m
            if ref._overlap(n, mov, m) >= MIN_OVERLAP:
                scored.append((ncc, m))
    scored.sort(key=lambda t: -t[0])
    return scored


def _params(m: np.ndarray) -> tuple[float, float, float, float]:
    scale = math.hypot(m[0, 0], m[1, 0])
    return math.degrees(math.atan2(m[1, 0], m[0, 0])), scale, float(m[0, 2]), float(m[1, 2])


def _refine(ref: _View, mov: _View, m0: np.ndarray, fixed_scale: bool, xtol: float) -> tuple[float, np.ndarray]:
    """Powell's method on rotation (5-degree units), translation (1/20 of the side) and log scale."""
    theta0, scale0, tx0, ty0 = _params(m0)
    side = max(ref.shape)

    def matrix(p: np.ndarray) -> np.ndarray:
        scale = scale0 if fixed_scale else scale0 * math.exp(p[3] / 20.0)
        return _similarity(theta0 + 5.0 * p[0], scale, tx0 + side / 20.0 * p[1], ty0 + side / 20.0 * p[2])

    def loss(p: np.ndarray) -> float:
        ncc, overlap = ref.score(mov, matrix(p))
        return -ncc if overlap >= MIN_OVERLAP else 1.0

    x0 = np.zeros(3 if fixed_scale else 4)
    res = optimize.minimize(loss, x0, method="Powell", options={"xtol": xtol, "ftol": 1e-4, "maxfev": 400})
    best = res.x if res.fun <= loss(x0) else x0
    return -float(loss(best)), matrix(best)


def _regrid(m: np.ndarray, old: tuple[_View, _View], new: tuple[_View, _View]) -> np.ndarray:
    """A transform between the ``old`` copies (after -> before) as one between the ``new`` copies."""
    return np.linalg.inv(_grid(old[0].shape, new[0].shape)) @ m @ _grid(old[1].shape, new[1].shape)


def _grid(small: tuple[int, ...], full: tuple[int, ...]) -> np.ndarray:
    """Pixel coordinates (x, y) of a ``full``-sized image -> those of its ``small`` copy (pixel centres)."""
    fy, fx = small[0] / full[0], small[1] / full[1]
    return np.array([[fx, 0.0, (fx - 1) / 2], [0.0, fy, (fy - 1) / 2], [0.0, 0.0, 1.0]])


def register_pair(
    before: np.ndarray,
    after: np.ndarray,
    *,
    scale: float | None = None,
    scale_source: str | None = None,
) -> Registration:
    """Register ``after`` onto ``before`` (RGB uint8 arrays; see the module docstring).

    Args:
        scale: before-pixels per after-pixel when known (``after_spacing / before_spacing``), else
            None to estimate it within :data:`SCALE_RANGE`.
        scale_source: how the scale was fixed, for the record (default ``pixel spacings`` when
            ``scale`` is given, else ``estimated``).

    Raises:
        ValueError: a bad image or a non-positive scale.
    """
    before = check_image(before, "before")
    after = check_image(after, "after")
    if scale is not None and not (math.isfinite(float(scale)) and scale > 0):
        raise ValueError(f"The 'scale' parameter must be a positive number or None. Got {scale!r} instead.")
    source = scale_source or ("pixel spacings" if scale is not None else "estimated")
    ref_full, mov_full = _View.of(before), _View.of(after)

    def copies(side: int) -> tuple[_View, _View, float, float]:
        fb = min(1.0, side / max(before.shape[:2]))
        # with a known scale the after copy gets the before copy's pixel size (same mm per pixel)
        fa = fb * (scale if scale is not None else max(before.shape[:2]) / max(after.shape[:2]))
        fa = min(fa, 2.0 * side / max(after.shape[:2]))
        return ref_full.resampled(fb), mov_full.resampled(fa), fb, fa

    ref_c, mov_c, fb_c, fa_c = copies(COARSE_SIDE)
    base = fb_c / fa_c
    scales = [scale * base] if scale is not None else [base * s for s in np.geomspace(*SCALE_RANGE, _SCALE_STEPS)]
    candidates = [m for _, m in _coarse(ref_c, mov_c, scales)[:_CANDIDATES]] or [
        _about_centres(0.0, scales[len(scales) // 2], _centre(mov_c.shape), _centre(ref_c.shape))
    ]
    # refine every candidate at half the working resolution, then the best one at the working resolution
    ref_m, mov_m, _, _ = copies(WORK_SIDE // 2)
    best = max(  # coarse (after_c -> before_c) to after_m -> before_m
        (_refine(ref_m, mov_m, _regrid(m_c, (ref_c, mov_c), (ref_m, mov_m)), scale is not None, xtol=0.05) for m_c in candidates),
        key=lambda found: found[0],
    )
    ref_w, mov_w, _, _ = copies(WORK_SIDE)
    _, m_w = _refine(ref_w, mov_w, _regrid(best[1], (ref_m, mov_m), (ref_w, mov_w)), scale is not None, xtol=0.02)
    ncc, overlap = ref_w.score(mov_w, m_w)
    matrix = np.linalg.inv(_grid(ref_w.shape, before.shape[:2])) @ m_w @ _grid(mov_w.shape, after.shape[:2])
    if scale is not None:  # the exact scale, not the one rounded by resampling the copies
        theta, _, _, _ = _params(matrix)
        centre = _centre(after.shape)
        matrix = _about_centres(theta, scale, centre, matrix[:2, :2] @ centre + matrix[:2, 2])
    unregistered = None
    if before.shape == after.shape:
        same = mov_full.resampled(ref_w.shape[0] / before.shape[0])
        unregistered = ref_w.ncc(same.values)[0] if same.shape == ref_w.shape else None
    theta, s, tx, ty = _params(matrix)
    return Registration(matrix, theta, s, (tx, ty), source, ncc, unregistered, overlap)


def warp_onto(after: np.ndarray, registration: Registration, shape: tuple[int, int], *, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The after image (RGB uint8, interpolated with ``order``; or a bool mask, bilinear then
    thresholded at 0.5) on the before image's pixel grid of ``shape``, and where it is defined."""
    m = registration.matrix
    valid = _warp(np.ones(after.shape[:2], np.float32), m, shape, 0) > 0.5
    if after.dtype == bool:
        return _warp(after.astype(np.float32), m, shape, 1) >= 0.5, valid
    channels = [_warp(after[..., k].astype(np.float32), m, shape, order) for k in range(after.shape[2])]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8), valid
