"""The Stolz ABCD rule of dermoscopy: Total Dermoscopy Score (TDS).

``TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D`` (Stolz et al. 1994, "ABCD rule of dermatoscopy: a new
practical method for early recognition of malignant melanoma"; Nachbar et al. 1994) with

* A: asymmetric axes, 0-2 (shape or colour/structure distribution, see ``abcde``);
* B: border sectors (of 8) with an abrupt cut-off of the pigment pattern, 0-8;
* C: number of the six dermoscopic colours present, 1-6;
* D: number of the five *differential structures* present, 1-5 (pigment network, structureless
  areas, dots, globules, streaks; detected heuristically, see ``_abcde_structures``).

Bands: TDS < 4.75 benign, 4.75-5.45 suspicious, > 5.45 highly suspicious for melanoma
(:data:`BANDS`). This D is not the clinical ABCDE diameter. Decision aid only: every
:class:`TDSResult` carries a ``notice``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from skinlesion.explain._abcde_artefacts import remove_hair
from skinlesion.explain._abcde_checks import check_image, check_mask
from skinlesion.explain._abcde_structures import (
    STRUCTURES,
    DermoscopicStructures,
    detect_structures,
)
from skinlesion.explain.abcde import ABCDEResult, measure_abcde
from skinlesion.explain.segmentation import segment_lesion

__all__ = [
    "BANDS",
    "STRUCTURES",
    "TDS_NOTICE",
    "DermoscopicStructures",
    "TDSComponents",
    "TDSResult",
    "detect_structures",
    "dermoscopy_score",
    "lesion_structures",
    "total_dermoscopy_score",
]

WEIGHTS = {"asymmetry": 1.3, "border": 0.1, "colours": 0.5, "structures": 0.5}
#: Upper limits (exclusive for "benign", inclusive for "suspicious") of the TDS bands.
BANDS: tuple[tuple[str, float], ...] = (("benign", 4.75), ("suspicious", 5.45), ("likely_melanoma", float("inf")))
TDS_NOTICE = (
    "The Total Dermoscopy Score is computed from automated measurements as a decision aid; it is not a "
    "diagnosis. The ABCD rule was validated on melanocytic lesions scored by trained dermoscopists, "
    "not on these automated estimates. A clinician must interpret it."
)
_RANGES = {"asymmetry": (0, 2), "border": (0, 8), "colours": (1, 6), "structures": (1, 5)}


@dataclass(frozen=True)
class TDSComponents:
    """The four ABCD-rule scores: asymmetry 0-2, border 0-8, colours 1-6, structures 1-5."""

    asymmetry: int
    border: int
    colours: int
    structures: int

    def __post_init__(self) -> None:
        for name, (lo, hi) in _RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ValueError(f"The '{name}' component must be an integer in [{lo}, {hi}]. Got {value!r} instead.")


@dataclass(frozen=True)
class TDSResult:
    """A Total Dermoscopy Score with its components and band (see the module docstring)."""

    components: TDSComponents
    score: float
    band: str
    structures: tuple[str, ...] = ()
    notice: str = field(default=TDS_NOTICE)

    def to_dict(self) -> dict:
        """JSON-friendly dict."""
        d = asdict(self)
        d["structures"] = list(self.structures)
        return d


def _band(score: float) -> str:
    if score < BANDS[0][1]:
        return "benign"
    return "suspicious" if score <= BANDS[1][1] else "likely_melanoma"


def total_dermoscopy_score(
    result_or_components: ABCDEResult | TDSComponents | Mapping[str, int],
    structures: DermoscopicStructures | int | None = None,
) -> TDSResult:
    """Total Dermoscopy Score from ABCDE measurements or from the four components.

    Args:
        result_or_components: an :class:`~skinlesion.explain.abcde.ABCDEResult` (A, B and C come
            from its asymmetric axes, abrupt border sectors and colour count, at least 1), a
            :class:`TDSComponents`, or a mapping with keys ``asymmetry``, ``border``, ``colours``,
            ``structures``.
        structures: D for an ``ABCDEResult``: the :func:`detect_structures` result or a count 1-5.

    Raises:
        ValueError: missing or out-of-range components, or an ``ABCDEResult`` without ``structures``.
    """
    found: tuple[str, ...] = ()
    if isinstance(result_or_components, ABCDEResult):
        if structures is None:
            raise ValueError(
                "The 'structures' parameter is required with an ABCDEResult (the D of the ABCD rule counts "
                "differential structures, not the diameter): pass detect_structures(...) or a count 1-5."
            )
        if isinstance(structures, DermoscopicStructures):
            found, n_structures = structures.present, structures.count
        else:
            n_structures = structures
        r = result_or_components
        components = TDSComponents(r.asymmetric_axes, r.abrupt_border_sectors, max(1, len(r.colours)), n_structures)
    elif isinstance(result_or_components, TDSComponents):
        components = result_or_components
    elif isinstance(result_or_components, Mapping):
        missing = sorted(set(_RANGES) - set(result_or_components))
        if missing:
            raise ValueError(f"The components mapping must have the keys {sorted(_RANGES)}; missing {missing}.")
        components = TDSComponents(**{k: result_or_components[k] for k in _RANGES})
    else:
        raise ValueError(
            "The 'result_or_components' parameter must be an ABCDEResult, TDSComponents or a mapping. "
            f"Got {type(result_or_components).__name__} instead."
        )
    score = round(sum(WEIGHTS[k] * getattr(components, k) for k in WEIGHTS), 2)
    return TDSResult(components=components, score=score, band=_band(score), structures=found)


def lesion_structures(image: np.ndarray, mask: np.ndarray) -> DermoscopicStructures:
    """:func:`detect_structures` on a uint8 RGB image (hair reaching the skin is removed first)."""
    image = check_image(image)
    mask = check_mask(mask, image.shape[:2])
    rgb, _ = remove_hair(image, mask)
    return detect_structures(rgb, mask)


def dermoscopy_score(
    image: np.ndarray, mask: np.ndarray | None = None, pixel_spacing_mm: float | None = None
) -> tuple[TDSResult, ABCDEResult]:
    """Segment (when ``mask`` is None), measure ABCDE and structures, and score the lesion.

    Returns ``(TDSResult, ABCDEResult)``; both are decision aids (see their ``notice``).

    Raises:
        ValueError: as :func:`~skinlesion.explain.abcde.measure_abcde`.
    """
    image = check_image(image)
    status = None
    if mask is None:
        seg = segment_lesion(image)
        if seg.quality == "not_found":
            raise ValueError("No lesion was found in 'image' by the automatic segmentation; pass a 'mask'.")
        mask, status = seg.mask, seg.quality
    result = measure_abcde(image, mask, pixel_spacing_mm)
    if status is not None:
        result = replace(result, segmentation=status)
    return total_dermoscopy_score(result, lesion_structures(image, mask)), result
