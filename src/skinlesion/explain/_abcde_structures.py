"""The D of the Stolz ABCD rule: which differential structures a lesion shows (heuristics).

Stolz et al. (1994) count five structures (1-5): pigment network, structureless (homogeneous)
areas, dots, globules and branched streaks. Each is detected here by a simple proxy on the CIELAB
lightness ``L*`` of the hair-free image inside the lesion mask. The proxies work on a *dark-structure
map*: pixels at least :data:`DARK_DELTA` L* units darker than the lesion's local mean (Gaussian
window, sigma 4 px, computed within the mask), at least 3 px inside the border. Thresholds are in
pixels, set for ~0.11 mm pixels (200 px wide images); finer structures than a pixel are invisible.

* **pigment network**: the dark map covers at least :data:`NETWORK_MIN_FRACTION` of the lesion and
  its pieces enclose at least :data:`NETWORK_MIN_HOLES` holes (a mesh of lines, not scattered spots;
  cf. Barata et al. 2012, "A system for the detection of pigment network in dermoscopy images").
* **dots**: at least :data:`MIN_COUNT` isolated tiny pieces (1-6 px, about 0.1-0.3 mm) at least
  ``2 * DARK_DELTA`` darker than their surroundings somewhere.
* **globules**: at least :data:`MIN_COUNT` round pieces (7-120 px, solidity >= 0.8, eccentricity
  < 0.9), i.e. about 0.3-1.3 mm across.
* **structureless**: at least :data:`STRUCTURELESS_MIN_FRACTION` (Stolz's 10%) of the lesion has a
  local lightness standard deviation (sigma 2 px) below :data:`FLAT_MAX_STD` L* units.
* **streaks**: at least :data:`MIN_COUNT` elongated dark pieces (major axis >= 2x minor, >= 4 px)
  in the outer third of the lesion (by depth) whose long axis points within 30 degrees of the
  lesion's centroid (radial streaks or pseudopods at the periphery).

These are screening heuristics validated only on the synthetic generator's structures (see
``tests/explain/test_tds.py``); they are not trained detectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.color import rgb2lab
from skimage.measure import label, regionprops

DARK_DELTA = 6.0
NETWORK_MIN_FRACTION = 0.10
NETWORK_MIN_HOLES = 3
MIN_COUNT = 3
STRUCTURELESS_MIN_FRACTION = 0.10
FLAT_MAX_STD = 3.0

STRUCTURES: tuple[str, ...] = ("pigment_network", "structureless", "dots", "globules", "streaks")


@dataclass(frozen=True)
class DermoscopicStructures:
    """Which of the five differential structures were found, with the evidence for each."""

    present: tuple[str, ...]
    evidence: dict[str, float]

    @property
    def count(self) -> int:
        """Stolz's D: the number of structures present, at least 1."""
        return max(1, len(self.present))


def _local_mean(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    weight = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    return ndimage.gaussian_filter(values * mask, sigma) / np.maximum(weight, 1e-6)


def _radial_streaks(dark: np.ndarray, rim: np.ndarray, centre: np.ndarray) -> int:
    count = 0
    for region in regionprops(label(dark & rim, connectivity=2)):
        major, minor = region.axis_major_length, region.axis_minor_length
        if major < 4.0 or major < 2.0 * max(minor, 0.5):
            continue
        along = np.array([math.cos(region.orientation), math.sin(region.orientation)])  # (row, col)
        radial = np.array(region.centroid) - centre
        norm = float(np.hypot(*radial))
        if norm > 0 and abs(float(along @ radial)) / norm >= math.cos(math.radians(30.0)):
            count += 1
    return count


def detect_structures(rgb: np.ndarray, mask: np.ndarray) -> DermoscopicStructures:
    """Detect the five Stolz differential structures in a lesion (see the module docstring).

    Args:
        rgb: float RGB image (H, W, 3) in 0-1, hair removed.
        mask: bool lesion mask (non-empty).
    """
    lightness = rgb2lab(np.clip(rgb, 0.0, 1.0))[..., 0]
    depth = ndimage.distance_transform_edt(mask)
    interior = depth >= 3.0
    if interior.sum() < 20:
        interior = depth >= 1.0
    area = float(max(1, interior.sum()))
    below = _local_mean(lightness, mask, 4.0) - lightness
    dark = (below >= DARK_DELTA) & interior
    pieces = label(dark, connectivity=2)
    props = regionprops(pieces)
    holes = sum(max(0, 1 - p.euler_number) for p in props)
    dark_fraction = float(dark.sum() / area)
    n_globules = sum(1 for p in props if 7 <= p.area <= 120 and p.solidity >= 0.8 and p.eccentricity < 0.9)
    peak = ndimage.maximum(below, pieces, np.arange(1, len(props) + 1)) if props else []
    n_dots = sum(1 for p, top in zip(props, peak) if p.area <= 6 and top >= 2 * DARK_DELTA)

    mean = ndimage.gaussian_filter(lightness, 2.0)
    std = np.sqrt(np.maximum(ndimage.gaussian_filter(lightness**2, 2.0) - mean**2, 0.0))
    flat_fraction = float((interior & (std < FLAT_MAX_STD)).sum() / area)

    rim = mask & (depth >= 1.0) & (depth <= max(2.0, depth.max() / 3.0))
    centre = np.array(ndimage.center_of_mass(mask))
    n_streaks = _radial_streaks((below >= DARK_DELTA) & mask, rim, centre)

    found = {
        "pigment_network": dark_fraction >= NETWORK_MIN_FRACTION and holes >= NETWORK_MIN_HOLES,
        "structureless": flat_fraction >= STRUCTURELESS_MIN_FRACTION,
        "dots": n_dots >= MIN_COUNT,
        "globules": n_globules >= MIN_COUNT,
        "streaks": n_streaks >= MIN_COUNT,
    }
    evidence = {
        "dark_fraction": dark_fraction,
        "dark_holes": float(holes),
        "n_dots": float(n_dots),
        "n_globules": float(n_globules),
        "structureless_fraction": flat_fraction,
        "n_radial_streaks": float(n_streaks),
    }
    return DermoscopicStructures(present=tuple(s for s in STRUCTURES if found[s]), evidence=evidence)
