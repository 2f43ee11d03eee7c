"""What defines one synthetic lesion: the dermoscopic colour palette, colour layers and the spec.

A :class:`LesionSpec` fixes everything about a lesion (shape, colours, textures, skin); rendering it
twice gives the same pixels. Acquisition effects (hair, vignette, ruler, noise, brightness) are
chosen at render time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: The six dermoscopic colours of the ABCD rule (Stolz et al. 1994; Argenziano et al. 2003).
DERMOSCOPIC_COLOURS: tuple[str, ...] = ("white", "red", "light_brown", "dark_brown", "blue_grey", "black")

#: Reference RGB used to paint each colour. Texture only scales it by a factor in
#: ``[1 - MAX_TONE, 1 + MAX_TONE]``, so a painted pixel of a clean image (no noise, hair,
#: vignette, brightness change) is always nearer (Euclidean RGB) to its own reference than to any
#: other; this is what makes the colour ground truth checkable on the pixels.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "white": (236, 232, 226),
    "red": (198, 52, 64),
    "light_brown": (186, 128, 80),
    "dark_brown": (104, 58, 36),
    "blue_grey": (108, 124, 152),
    "black": (36, 28, 30),
}

#: Largest relative brightness change texture and shading may apply to a reference colour.
MAX_TONE = 0.18
#: Relative brightness change per unit of :attr:`ColourLayer.shade`.
SHADE_STEP = 0.11

#: How a colour layer chooses its region inside the lesion (see ``_paint``).
LAYER_KINDS: tuple[str, ...] = ("base", "blotch", "centre", "periphery", "network", "globules", "lines", "streaks")


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = math.isfinite(float(value)) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"The '{name}' parameter must be in {bracket}{low}, {high}]. Got {value!r} instead.")


def _check_harmonics(name: str, terms: tuple[Harmonic, ...], k_min: int, k_max: int) -> None:
    for term in terms:
        if len(term) != 3:
            raise ValueError(f"Each of '{name}' must be (order, amplitude, phase). Got {term!r} instead.")
        k, amp, phase = term
        if int(k) != k or not k_min <= k <= k_max:
            raise ValueError(f"The orders in '{name}' must be integers in [{k_min}, {k_max}]. Got {k!r} instead.")
        if not (0.0 <= amp < 1.0) or not math.isfinite(float(phase)):
            raise ValueError(f"The amplitudes in '{name}' must be in [0, 1) with a finite phase. Got {term!r} instead.")


@dataclass(frozen=True)
class ColourLayer:
    """One dermoscopic colour painted on a region of the lesion; later layers paint over earlier.

    Attributes:
        colour: one of :data:`DERMOSCOPIC_COLOURS`.
        kind: region shape, one of :data:`LAYER_KINDS`: ``base`` (whole lesion), ``blotch``
            (smooth patches, optionally leaning to one side), ``centre``/``periphery`` (inner or
            outer part by normalised radius), ``network`` (thin connected lines, pigment network
            or cerebriform sulci), ``globules`` (round dots/nests/lacunae), ``lines`` (scattered
            line segments: vessels), ``streaks`` (radial lines at the rim).
        coverage: fraction of the lesion area the region is thresholded to (before later layers
            paint over it), in (0, 1].
        scale_px: feature size in pixels (patch size, mesh size, dot diameter).
        shade: tone of this layer's pixels, in [-1, 1] (-1 darker, +1 lighter) of the same colour.
        eccentricity: for ``blotch``, how strongly the patches lean towards ``direction`` (0..1);
            this makes the colours asymmetric.
        direction: lesion-frame angle (radians) that an eccentric blotch leans to.
    """

    colour: str
    kind: str = "base"
    coverage: float = 1.0
    scale_px: float = 6.0
    shade: float = 0.0
    eccentricity: float = 0.0
    direction: float = 0.0

    def __post_init__(self) -> None:
        if self.colour not in DERMOSCOPIC_COLOURS:
            raise ValueError(
                f"The 'colour' of a ColourLayer must be one of {DERMOSCOPIC_COLOURS}. Got {self.colour!r} instead."
            )
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"The 'kind' of a ColourLayer must be one of {LAYER_KINDS}. Got {self.kind!r} instead.")
        _check_range("coverage", self.coverage, 0.0, 1.0, low_open=True)
        _check_range("scale_px", self.scale_px, 0.5, 500.0)
        _check_range("shade", self.shade, -1.0, 1.0)
        _check_range("eccentricity", self.eccentricity, 0.0, 1.0)


Harmonic = tuple[int, float, float]


@dataclass(frozen=True)
class LesionSpec:
    """Everything that defines one lesion (lengths in pixels, angles in radians).

    The boundary is star-shaped around ``centre``: in the lesion frame (rotated by ``angle``,
    mirrored when ``flip``) the radius at angle ``t`` is
    ``r(t) = E(t) * (1 + sum_k a_k cos(k t + phi_k))`` over ``asym_harmonics`` (orders 1-4: shape
    asymmetry) and ``border_harmonics`` (orders >= 5: border irregularity), clipped below at
    ``0.3 E(t)``; ``E`` is the ellipse of mean radius ``radius_px`` (``sqrt`` of the product of
    its semi-axes) and axis ratio ``elongation`` (minor/major, in (0, 1]).

    ``layers`` paint the colours (the first must be a ``base`` layer). Around the mask the lesion
    fades into the skin over ``edge_width_px`` pixels at most half opaque, so every pixel inside the
    mask shows the lesion and none outside it does more than the skin. ``texture_seed`` fixes the
    textures; they live in the lesion frame, so a rotated, mirrored or shifted copy of a spec shows
    the same lesion.
    """

    label: str
    centre: tuple[float, float]
    radius_px: float
    elongation: float = 1.0
    angle: float = 0.0
    asym_harmonics: tuple[Harmonic, ...] = ()
    border_harmonics: tuple[Harmonic, ...] = ()
    layers: tuple[ColourLayer, ...] = field(default=(ColourLayer("light_brown"),))
    edge_width_px: float = 1.5
    texture_amplitude: float = 0.06
    skin_rgb: tuple[int, int, int] = (226, 184, 166)
    erythema: float = 0.0
    texture_seed: int = 0
    flip: bool = False
    pixel_spacing_mm: float = 0.11

    def __post_init__(self) -> None:
        if len(self.centre) != 2 or not all(math.isfinite(float(c)) for c in self.centre):
            raise ValueError(f"The 'centre' of a LesionSpec must be (row, col) in pixels. Got {self.centre!r} instead.")
        _check_range("radius_px", self.radius_px, 0.5, 1e5)
        _check_range("elongation", self.elongation, 0.0, 1.0, low_open=True)
        _check_range("edge_width_px", self.edge_width_px, 0.0, 100.0)
        _check_range("texture_amplitude", self.texture_amplitude, 0.0, 0.1)
        _check_range("erythema", self.erythema, 0.0, 1.0)
        _check_range("pixel_spacing_mm", self.pixel_spacing_mm, 0.0, 100.0, low_open=True)
        _check_harmonics("asym_harmonics", self.asym_harmonics, 1, 4)
        _check_harmonics("border_harmonics", self.border_harmonics, 5, 200)
        if not self.layers or self.layers[0].kind != "base":
            raise ValueError(
                "The 'layers' of a LesionSpec must start with a ColourLayer of kind 'base'. "
                f"Got {tuple(layer.kind for layer in self.layers)!r} instead."
            )
        if len(self.skin_rgb) != 3 or not all(0 <= int(v) <= 255 for v in self.skin_rgb):
            raise ValueError(
                f"The 'skin_rgb' of a LesionSpec must be three values in 0..255. Got {self.skin_rgb!r} instead."
            )

    @property
    def colours(self) -> tuple[str, ...]:
        """The colours the layers use, in :data:`DERMOSCOPIC_COLOURS` order (a colour whose region
        ends up below the minimum fraction is merged away when rendering; see ``LesionTruth``)."""
        used = {layer.colour for layer in self.layers}
        return tuple(c for c in DERMOSCOPIC_COLOURS if c in used)
