"""Per-class recipes: how each diagnosis tends to look under the dermatoscope, as ranges to sample.

The recipes follow the dermoscopy literature in broad strokes (Argenziano et al. 2003, "Dermoscopy
of pigmented skin lesions: results of a consensus meeting via the Internet"; Stolz et al. 1994,
ABCD rule; Menzies et al. 2000 for BCC): melanoma large, asymmetric, irregular, with 3-6 colours
including blue-grey or black; naevi small, symmetric, smooth, one or two browns; BCC pink-red with
blue-grey ovoid nests, white areas and arborising vessels; actinic keratosis / Bowen red with white
scale and erythema; seborrhoeic keratosis-like lesions brown with sharp edges, cerebriform sulci,
milia-like cysts; dermatofibroma small light brown with a central white patch; vascular lesions red
lacunae. Ranges overlap between classes, so no single property decides the class.
"""

from __future__ import annotations

import math

import numpy as np

from skinlesion.classes import canonical_label
from skinlesion.data.synthetic._shape import max_boundary_radius
from skinlesion.data.synthetic._spec import ColourLayer, LesionSpec

#: Millimetres spanned by the image width when no pixel spacing is given: a 200 px wide HAM10000
#: image then has 0.11 mm pixels, about what a 10x contact dermatoscope frame covers.
FIELD_OF_VIEW_MM = 22.0

_SKIN_TONES = np.array([[238, 204, 192], [230, 188, 170], [222, 178, 152], [208, 162, 132], [192, 144, 112]], float)
_SKIN_WEIGHTS = np.array([0.25, 0.3, 0.25, 0.14, 0.06])

# label -> diameter mm, elongation (minor/major), asymmetry amplitude, border amplitude,
#          edge width mm, erythema, texture amplitude
_PROFILES: dict[str, dict[str, tuple[float, float]]] = {
    "MEL": dict(
        diam=(6.0, 15.0), elong=(0.5, 0.9), asym=(0.07, 0.2), border=(0.025, 0.07), edge=(0.1, 0.5), ery=(0.0, 0.2)
    ),
    "NV": dict(
        diam=(2.5, 7.0), elong=(0.7, 1.0), asym=(0.0, 0.035), border=(0.0, 0.012), edge=(0.1, 0.3), ery=(0.0, 0.1)
    ),
    "BCC": dict(
        diam=(4.0, 12.0), elong=(0.55, 0.95), asym=(0.02, 0.12), border=(0.01, 0.045), edge=(0.2, 0.5), ery=(0.1, 0.5)
    ),
    "AKIEC": dict(
        diam=(5.0, 12.0), elong=(0.55, 0.95), asym=(0.02, 0.1), border=(0.015, 0.05), edge=(0.4, 0.8), ery=(0.4, 0.9)
    ),
    "BKL": dict(
        diam=(5.0, 13.0), elong=(0.55, 0.95), asym=(0.02, 0.12), border=(0.01, 0.045), edge=(0.0, 0.15), ery=(0.0, 0.15)
    ),
    "DF": dict(
        diam=(3.0, 8.0), elong=(0.65, 1.0), asym=(0.0, 0.04), border=(0.0, 0.015), edge=(0.3, 0.6), ery=(0.05, 0.3)
    ),
    "VASC": dict(
        diam=(2.5, 9.0), elong=(0.7, 1.0), asym=(0.0, 0.05), border=(0.0, 0.02), edge=(0.0, 0.15), ery=(0.0, 0.3)
    ),
}

SYNTHETIC_CLASSES: tuple[str, ...] = tuple(_PROFILES)


def default_pixel_spacing(size: tuple[int, int]) -> float:
    """Millimetres per pixel when the image width spans :data:`FIELD_OF_VIEW_MM`."""
    return FIELD_OF_VIEW_MM / size[1]


class _Draw:
    """Sampling helpers bound to one generator and pixel spacing."""

    def __init__(self, rng: np.random.Generator, spacing: float) -> None:
        self.rng, self.spacing = rng, spacing

    def u(self, lo: float, hi: float) -> float:
        return float(self.rng.uniform(lo, hi))

    def p(self, prob: float) -> bool:
        return bool(self.rng.random() < prob)

    def px(self, lo_mm: float, hi_mm: float, floor: float = 1.2) -> float:
        """A length drawn in millimetres, returned in pixels (at least ``floor``)."""
        return max(floor, self.u(lo_mm, hi_mm) / self.spacing)

    def layer(
        self, colour: str, kind: str, cov: tuple[float, float], scale_mm: tuple[float, float], **kw: float
    ) -> ColourLayer:
        return ColourLayer(colour, kind, coverage=self.u(*cov), scale_px=self.px(*scale_mm), **kw)


def _mel_layers(d: _Draw) -> list[ColourLayer]:
    base = "light_brown" if d.p(0.6) else "dark_brown"
    other_brown = "dark_brown" if base == "light_brown" else "light_brown"
    n_extra = int(d.rng.choice([2, 3, 4, 5], p=[0.35, 0.35, 0.2, 0.1]))
    pool = [c for c in ("blue_grey", "black") if d.p(0.5)] or [str(d.rng.choice(["blue_grey", "black"]))]
    rest = [str(c) for c in d.rng.permutation([other_brown, "blue_grey", "black", "white", "red"]) if c not in pool]
    extra = (pool + rest)[:n_extra]
    lean = d.u(0, 2 * math.pi)
    ecc = dict(direction=lean + d.u(-0.6, 0.6))
    layers = []
    for c in extra:
        if c == other_brown:
            kind = str(d.rng.choice(["blotch", "network", "blotch"]))
            scale = (0.5, 0.9) if kind == "network" else (1.5, 3.0)
            layers.append(d.layer(c, kind, (0.25, 0.45), scale, eccentricity=d.u(0.3, 1.0), **ecc))
        elif c == "black":
            kind = "globules" if d.p(0.4) else "blotch"
            scale = (0.3, 0.6) if kind == "globules" else (1.0, 2.0)
            layers.append(d.layer(c, kind, (0.06, 0.14), scale, eccentricity=d.u(0.3, 1.0), **ecc))
        elif c == "blue_grey":
            layers.append(d.layer(c, "blotch", (0.1, 0.28), (1.5, 3.0), eccentricity=d.u(0.2, 1.0), **ecc))
        elif c == "white":
            layers.append(
                d.layer(c, "blotch", (0.06, 0.15), (1.0, 2.5), eccentricity=d.u(0.0, 0.8), direction=d.u(0, 6.3))
            )
        else:  # red: atypical vessels or inflamed patches
            kind = "lines" if d.p(0.5) else "blotch"
            layers.append(d.layer(c, kind, (0.06, 0.12), (0.8, 1.5), eccentricity=d.u(0.0, 0.8), direction=d.u(0, 6.3)))
    layers.sort(key=lambda layer: -layer.coverage)
    dark = [c for c in ("black", "dark_brown") if c in extra or c == base]
    if dark and d.p(0.35):  # radial streaks / pseudopods at the rim in a dark colour already used
        layers.append(d.layer(dark[0], "streaks", (0.08, 0.15), (0.5, 0.9)))
    return [ColourLayer(base), *layers]


def _nv_layers(d: _Draw) -> list[ColourLayer]:
    if d.p(0.06):  # blue naevus: homogeneous blue-grey, sometimes a brown centre
        extra = [d.layer("dark_brown", "centre", (0.15, 0.3), (1.0, 2.0))] if d.p(0.4) else []
        return [ColourLayer("blue_grey", shade=d.u(-0.5, 0.5)), *extra]
    pattern = str(d.rng.choice(["reticular", "globular", "homogeneous", "centre"], p=[0.4, 0.2, 0.2, 0.2]))
    if pattern == "homogeneous":
        return [ColourLayer("light_brown" if d.p(0.6) else "dark_brown", shade=d.u(-0.5, 0.5))]
    base = ColourLayer("light_brown", shade=d.u(-0.5, 0.5))
    if pattern == "reticular":
        return [base, d.layer("dark_brown", "network", (0.18, 0.35), (0.5, 0.8))]
    if pattern == "globular":
        return [base, d.layer("dark_brown", "globules", (0.12, 0.25), (0.35, 0.6))]
    return [base, d.layer("dark_brown", "centre", (0.2, 0.45), (1.0, 2.0))]


def _bcc_layers(d: _Draw) -> list[ColourLayer]:
    white_base = d.p(0.35)
    layers = [ColourLayer("white", shade=d.u(-1, 0))] if white_base else [ColourLayer("red", shade=d.u(0.5, 1.0))]
    if white_base:
        layers.append(d.layer("red", "blotch", (0.3, 0.5), (1.5, 3.0), shade=1.0))
    elif d.p(0.7):
        layers.append(d.layer("white", "blotch", (0.08, 0.2), (1.0, 2.5), shade=-0.5))
    if d.p(0.85):
        layers.append(d.layer("blue_grey", "globules", (0.08, 0.2), (0.8, 1.6)))
    if d.p(0.25):
        layers.append(d.layer(str(d.rng.choice(["dark_brown", "black"])), "globules", (0.04, 0.08), (0.3, 0.5)))
    layers.append(d.layer("red", "lines", (0.05, 0.1), (1.0, 2.0), shade=-1.0))  # arborising vessels
    return layers


def _akiec_layers(d: _Draw) -> list[ColourLayer]:
    layers = [ColourLayer("red", shade=d.u(0.3, 1.0))]
    if d.p(0.4):
        layers.append(d.layer("light_brown", "blotch", (0.12, 0.3), (1.5, 3.0), shade=0.5))
    layers.append(d.layer("white", "blotch", (0.15, 0.35), (0.5, 1.0)))  # scale
    layers.append(d.layer("red", "globules", (0.06, 0.12), (0.3, 0.45), shade=-1.0))  # dotted vessels
    if d.p(0.12):
        layers.append(d.layer("dark_brown", "globules", (0.04, 0.08), (0.3, 0.5)))
    return layers


def _bkl_layers(d: _Draw) -> list[ColourLayer]:
    base = "light_brown" if d.p(0.6) else "dark_brown"
    other = "dark_brown" if base == "light_brown" else "light_brown"
    layers = [
        ColourLayer(base, shade=d.u(-0.5, 0.5)),
        d.layer(other, "network", (0.3, 0.45), (1.0, 1.8)),
    ]  # cerebriform
    if d.p(0.6):
        layers.append(d.layer("white", "globules", (0.04, 0.08), (0.3, 0.5)))  # milia-like cysts
    if d.p(0.35):
        layers.append(d.layer("black", "globules", (0.03, 0.07), (0.3, 0.5)))  # comedo-like openings
    if d.p(0.1):
        layers.append(d.layer("blue_grey", "blotch", (0.08, 0.2), (1.0, 2.0)))  # regression (LPLK)
    return layers


def _df_layers(d: _Draw) -> list[ColourLayer]:
    layers = [ColourLayer("light_brown", shade=d.u(-0.3, 0.7))]
    if d.p(0.5):
        layers.append(d.layer("dark_brown", "network", (0.1, 0.2), (0.5, 0.8)))  # delicate peripheral network
    if d.p(0.15):
        layers.append(d.layer("red", "blotch", (0.1, 0.25), (1.5, 3.0), shade=1.0))
    layers.append(d.layer("white", "centre", (0.15, 0.35), (1.0, 2.0), shade=-0.3))  # central white patch
    return layers


def _vasc_layers(d: _Draw) -> list[ColourLayer]:
    scale = (0.6, 1.2)
    layers = [ColourLayer("red", shade=d.u(0.4, 1.0)), d.layer("red", "globules", (0.35, 0.5), scale, shade=-1.0)]
    if d.p(0.45):
        layers.append(d.layer("blue_grey", "globules", (0.1, 0.3), scale, shade=-0.5))  # purple-blue lacunae
    if d.p(0.3):
        layers.append(d.layer("white", "network", (0.06, 0.12), scale))  # septa
    if d.p(0.15):
        layers.append(d.layer("black", "globules", (0.04, 0.08), (0.4, 0.7)))  # thrombosis
    return layers


_LAYERS = {"MEL": _mel_layers, "NV": _nv_layers, "BCC": _bcc_layers, "AKIEC": _akiec_layers,
           "BKL": _bkl_layers, "DF": _df_layers, "VASC": _vasc_layers}  # fmt: skip


def supported_label(label: str) -> str:
    """Canonical name of ``label`` if the generator has a recipe for it."""
    canon = canonical_label(label)
    if canon not in _PROFILES:
        raise ValueError(f"The synthetic generator has no recipe for class {canon!r}; it knows {SYNTHETIC_CLASSES}.")
    return canon


def sample_spec(
    label: str, rng: np.random.Generator, *, size: tuple[int, int] = (150, 200), pixel_spacing_mm: float | None = None
) -> LesionSpec:
    """Draw a lesion of class ``label`` (canonical or dataset name) for an image of ``size`` (H, W).

    The lesion (boundary plus fading rim) lies fully inside the image with a 2 px margin: larger
    draws are scaled down to fit, so very large melanomas are capped by the field of view.
    """
    label = supported_label(label)
    size = check_size(size)
    spacing = default_pixel_spacing(size) if pixel_spacing_mm is None else float(pixel_spacing_mm)
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(
            f"The 'pixel_spacing_mm' parameter must be a positive number. Got {pixel_spacing_mm!r} instead."
        )
    prof, d = _PROFILES[label], _Draw(rng, spacing)
    amp_a, amp_b = d.u(*prof["asym"]), d.u(*prof["border"])
    asym = tuple((k, amp_a * d.u(0.4, 1.0), d.u(0, 2 * math.pi)) for k in (1, 2, 3, 4))
    orders = sorted(int(k) for k in rng.choice(np.arange(5, 25), 6, replace=False))
    border = tuple((k, amp_b * d.u(0.3, 1.0) * (5.0 / k) ** 0.6, d.u(0, 2 * math.pi)) for k in orders)
    tone = _SKIN_TONES[rng.choice(len(_SKIN_TONES), p=_SKIN_WEIGHTS)] + rng.uniform(-6, 6, 3)
    spec = LesionSpec(
        label=label,
        centre=(size[0] / 2, size[1] / 2),
        radius_px=max(1.5, d.u(*prof["diam"]) / spacing / 2.0),
        elongation=d.u(*prof["elong"]),
        angle=d.u(0, math.pi),
        asym_harmonics=asym,
        border_harmonics=border,
        layers=tuple(_LAYERS[label](d)),
        edge_width_px=d.u(*prof["edge"]) / spacing,
        texture_amplitude=d.u(0.03, 0.07),
        skin_rgb=tuple(int(v) for v in np.clip(np.rint(tone), 0, 255)),
        erythema=d.u(*prof["ery"]),
        texture_seed=int(rng.integers(2**31)),
        pixel_spacing_mm=spacing,
    )
    return fit_in_frame(spec, size, rng)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` as (H, W) ints, at least 16 x 16."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"The 'size' parameter must be (height, width). Got {size!r} instead.") from None
    if h < 16 or w < 16 or (h, w) != tuple(size):
        raise ValueError(f"The 'size' parameter must be two integers >= 16 (height, width). Got {size!r} instead.")
    return h, w


def fit_in_frame(
    spec: LesionSpec, size: tuple[int, int], rng: np.random.Generator, *, jitter: float = 0.12
) -> LesionSpec:
    """Shrink ``spec`` if it cannot fit and place its centre near the image centre (random offset
    up to ``jitter`` of the image size) so that boundary and rim stay 2 px inside the image."""
    from dataclasses import replace

    h, w = size
    reach = max_boundary_radius(spec) + spec.edge_width_px + 2.0
    limit = min(h, w) / 2.0
    if reach > limit:
        shrink = (limit - spec.edge_width_px - 3.0) / (reach - spec.edge_width_px - 2.0)
        spec = replace(spec, radius_px=max(1.0, spec.radius_px * max(shrink, 0.05)))
        reach = max_boundary_radius(spec) + spec.edge_width_px + 2.0
    slack_r, slack_c = max(0.0, h / 2 - reach), max(0.0, w / 2 - reach)
    dr = float(rng.uniform(-1, 1)) * min(slack_r, jitter * h)
    dc = float(rng.uniform(-1, 1)) * min(slack_c, jitter * w)
    return replace(spec, centre=((h - 1) / 2 + dr, (w - 1) / 2 + dc))
