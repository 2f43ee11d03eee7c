"""The C of ABCD: which of the six dermoscopic colours a lesion shows (Stolz et al. 1994).

Each colour is a reference chromaticity seen under varying illumination: a short segment of RGB
values ``t * rgb`` for ``t`` in ``[1 - TONE_RANGE, 1 + TONE_RANGE]``. A pixel takes the colour whose
segment is nearest in CIELAB (Delta E 1976), or "skin" when the image's own skin colour (same
kind of segment) is nearer, so blended border pixels and skin inside a loose mask are not counted.
The references are the synthetic generator's palette (``skinlesion.data.synthetic.COLOUR_RGB``),
whose painted pixels vary by at most ``MAX_TONE`` = 18% in brightness; on real images the same
references are only a calibrated starting point.
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab

from skinlesion.data.synthetic import (
    COLOUR_RGB,
    DERMOSCOPIC_COLOURS,
    MIN_COLOUR_FRACTION,
)

#: Relative brightness range of each reference colour (the generator's ``MAX_TONE`` plus margin).
TONE_RANGE = 0.2
#: Brightness range of the skin reference around the estimated skin colour.
SKIN_TONE_RANGE = 0.15
#: A colour is present when it covers at least this fraction of the lesion (the generator's rule).
MIN_FRACTION = MIN_COLOUR_FRACTION
#: Label of pixels nearest to the skin reference (not a dermoscopic colour).
SKIN_LABEL = len(DERMOSCOPIC_COLOURS)

_TONES = np.linspace(1.0 - TONE_RANGE, 1.0 + TONE_RANGE, 17)


def _segment_lab(rgb: tuple[float, float, float], tones: np.ndarray) -> np.ndarray:
    """CIELAB points (n, 3) along ``t * rgb`` (0-255 RGB, clipped)."""
    pts = np.clip(np.outer(tones, np.asarray(rgb, dtype=np.float64)) / 255.0, 0.0, 1.0)
    return rgb2lab(pts[None])[0]


_REFERENCE_LAB = [_segment_lab(COLOUR_RGB[c], _TONES) for c in DERMOSCOPIC_COLOURS]


def classify_pixels(pixels: np.ndarray, skin_rgb: tuple[float, float, float] | None) -> np.ndarray:
    """Colour index (into ``DERMOSCOPIC_COLOURS``, or :data:`SKIN_LABEL`) of each (n, 3) 0-255 RGB pixel."""
    lab = rgb2lab(np.clip(np.asarray(pixels, dtype=np.float64) / 255.0, 0.0, 1.0)[None])[0]
    refs = list(_REFERENCE_LAB)
    if skin_rgb is not None:
        refs.append(_segment_lab(skin_rgb, np.linspace(1.0 - SKIN_TONE_RANGE, 1.0 + SKIN_TONE_RANGE, 13)))
    dist = np.stack([np.min(((lab[:, None, :] - ref[None]) ** 2).sum(-1), axis=1) for ref in refs], axis=1)
    return np.argmin(dist, axis=1)


def colour_fractions(labels: np.ndarray) -> dict[str, float]:
    """Share of the lesion pixels (all of ``labels``, skin-labelled ones included) per colour."""
    counts = np.bincount(labels, minlength=SKIN_LABEL + 1).astype(np.float64)
    total = max(1.0, float(counts.sum()))
    out = {c: float(counts[i] / total) for i, c in enumerate(DERMOSCOPIC_COLOURS)}
    out["skin_or_unassigned"] = float(counts[SKIN_LABEL] / total)
    return out


def present_colours(fractions: dict[str, float], min_fraction: float = MIN_FRACTION) -> tuple[str, ...]:
    """The dermoscopic colours covering at least ``min_fraction`` of the lesion, in canonical order."""
    return tuple(c for c in DERMOSCOPIC_COLOURS if fractions.get(c, 0.0) >= min_fraction)
