"""Per-image conceptual sensitivity (Kim et al. 2018, eq. 1) of every concept of a bank.

Reported next to the concept's TCAV significance for the class: a concept that is not significant
must not be read as an explanation, and per-image sensitivities are local derivatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from skinlesion.explain.concept_bank.bank import ConceptBank
from skinlesion.explain.concepts import TCAVExplainer


@dataclass(frozen=True)
class ConceptSensitivity:
    """``S_{C,k}(x)`` (Kim et al. 2018, eq. 1) of one image, weighted over members, with the
    concept's TCAV result for class ``k`` in the bank. ``float(s)`` is the weighted sensitivity."""

    concept: str
    class_index: int
    class_name: str
    sensitivity: float
    per_member: dict[str, float]
    tcav_score: float | None
    tcav_std: float | None
    p_value_corrected: float | None
    significant: bool
    cav_accuracy: float | None

    def __float__(self) -> float:
        return self.sensitivity

    @property
    def direction(self) -> str:
        """``"up"``, ``"down"`` or ``"none"``: how the concept moves this image's class logit."""
        return "up" if self.sensitivity > 0 else "down" if self.sensitivity < 0 else "none"

    def summary(self) -> str:
        """One sentence for a report; insignificant concepts are labelled as such."""
        here = f"for this image it pushes {self.class_name} {self.direction} (S={self.sensitivity:+.3g})"
        if self.tcav_score is None:
            return f"{self.concept}: not tested for {self.class_name} in the bank; {here}."
        tcav = f"TCAV {self.tcav_score:.2f}, p={self.p_value_corrected:.3g} corrected"
        if self.significant:
            return f"{self.concept} matters for {self.class_name} in general ({tcav}) and {here}."
        return (f"{self.concept} is not significant for {self.class_name} ({tcav}); its per-image sensitivity "
                f"({self.sensitivity:+.3g}) is not an explanation.")


def concept_sensitivity(bundle: Any, bank: ConceptBank, image: np.ndarray,
                        class_index: int | str) -> dict[str, ConceptSensitivity]:
    """Per-image conceptual sensitivity of every bank concept for ``class_index`` (index or name):
    ``sum_m w_m grad h_{m,k}(f_m(x)) . v_{m,C}`` over members ``m`` with the bank's weights and
    mean CAVs (Kim et al. 2018, eq. 1), plus the concept's weighted TCAV result for that class."""
    if not isinstance(bank, ConceptBank):
        raise ValueError(f"The 'bank' parameter must be a ConceptBank. Got {type(bank).__name__} instead.")
    if isinstance(class_index, str):
        if class_index not in bank.classes:
            raise ValueError(f"The 'class_index' parameter must be one of {list(bank.classes)} or an index. "
                             f"Got {class_index!r} instead.")
        class_index = bank.classes.index(class_index)
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) or not (
            0 <= int(class_index) < len(bank.classes)):
        raise ValueError(f"The 'class_index' parameter must be an integer in [0, {len(bank.classes)}). "
                         f"Got {class_index!r} instead.")
    k = int(class_index)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"The 'image' parameter must be an RGB uint8 (H, W, 3) array. "
                         f"Got dtype {image.dtype}, shape {image.shape} instead.")
    members = {m.name: m for m in bundle.members}
    for bm in bank.members:
        m = members.get(bm.name)
        if m is None or (bm.weights_sha256 and m.meta.get("weights_sha256") not in (None, bm.weights_sha256)):
            raise ValueError(f"The 'bank' was learned on member {bm.name!r} with weights {bm.weights_sha256}, which "
                             f"this bundle {'lacks' if m is None else 'has with other weights'}; learn the bank again.")
    total = sum(bm.weight for bm in bank.members) or 1.0
    per: dict[str, dict[str, float]] = {c: {} for c in bank.concepts}
    for bm in bank.members:
        explainer = TCAVExplainer(members[bm.name], layer=bm.layer, n_runs=2)
        grad = explainer.gradients([image], k)[0]
        for concept in bank.concepts:
            v = bank.cavs[(bm.name, concept)].vector
            if v.shape[0] != grad.shape[0]:
                raise ValueError(f"The 'bank' CAV of {concept!r} for member {bm.name!r} has {v.shape[0]} dimensions; "
                                 f"layer {bm.layer!r} now has {grad.shape[0]} (input size changed?). Learn it again.")
            per[concept][bm.name] = float(grad @ v.astype(np.float64))
    out = {}
    for concept, values in per.items():
        s = float(sum(bm.weight / total * values[bm.name] for bm in bank.members))
        r = bank.result(concept, k)
        out[concept] = ConceptSensitivity(
            concept, k, bank.classes[k], s if math.isfinite(s) else float("nan"), values,
            None if r is None else r.score_mean, None if r is None else r.score_std,
            None if r is None else r.p_value_corrected, bool(r is not None and r.significant),
            None if r is None else r.cav_accuracy)
    return out


__all__ = ["ConceptSensitivity", "concept_sensitivity"]
