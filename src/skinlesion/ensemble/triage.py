"""The decision parts ``calibrate`` fits beside the class thresholds: diagnosis rule, referral, OOD gate.

Each is fitted on held-out predictions only (the bundle's validation rows, or its out-of-fold rows
for a cross-fitted bundle) and recorded in bundle.json with how it was chosen:

- ``diagnosis``: per-class log-weights for balanced accuracy, their limit chosen by lesion-grouped
  cross-validation on the held-out rows (:func:`~skinlesion.calibration.diagnosis.select_diagnosis_rule`;
  argmax when no limit beats it out of sample);
- ``referral``: the most specific threshold on the malignant probability whose lower confidence bound
  of malignant sensitivity reaches the target (:func:`~skinlesion.calibration.referral.fit_referral`);
- ``ood``: the out-of-distribution gate, scores fitted on training images, threshold on held-out ones
  (:func:`skinlesion.ood.gate.fit_ood_gate`), its arrays in ``ood_gate.npz`` beside bundle.json.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from skinlesion.calibration.diagnosis import select_diagnosis_rule
from skinlesion.calibration.referral import fit_referral
from skinlesion.classes import malignant_indices
from skinlesion.ensemble.bundle import Bundle

log = logging.getLogger(__name__)

#: Malignant sensitivity the referral keeps (one-sided lower confidence bound).
REFERRAL_SENSITIVITY = 0.95


def fit_diagnosis_and_referral(
    probs: np.ndarray, y: np.ndarray, groups: np.ndarray, classes: Sequence[str], *, fitted_on: str,
    referral_sensitivity: float = REFERRAL_SENSITIVITY, confidence: float | None = 0.95, bound: str = "clopper-pearson",
) -> dict[str, Any]:
    """``{"diagnosis": ..., "referral": ...}`` fitted on held-out calibrated ``probs`` ``(N, K)``
    (``referral`` None when the classes have no malignant one)."""
    rule, report = select_diagnosis_rule(probs, y, groups)
    trials = [
        {k: round(float(r[k]), 6) if isinstance(r[k], float) else r[k] for k in ("start", "limit", "bacc_argmax", "bacc_balanced", "gain")}
        for r in report["trials"]
    ]
    diagnosis = {
        **rule.to_dict(classes),
        "fitted_on": fitted_on,
        "selection": {"cross_validation": "5 lesion-grouped folds x 3 shuffles", "trials": trials, "why": report["why"]},
    }
    referral = None
    if malignant_indices(classes):
        referral = {
            **fit_referral(probs, y, classes, sensitivity=referral_sensitivity, confidence=confidence, bound=bound),
            "fitted_on": fitted_on,
        }
    return {"diagnosis": diagnosis, "referral": referral}


def fit_bundle_ood(
    bundle: Bundle, data_root: str | None = None, *, score: str = "knn", quantile: float = 0.95,
    max_train_images: int | None = 2000, batch_size: int = 32, device: str | None = None,
) -> dict[str, Any]:
    """Fit the out-of-distribution gate of a saved bundle, write its arrays beside bundle.json and
    return what ``decision.ood`` records.

    A cross-fitted bundle's gate uses its first member only: its scores on the rows it trained on,
    its threshold on its own held-out fold (the other members' training rows include that fold)."""
    from skinlesion.ood.gate import fit_ood_gate

    if bundle.path is None:
        raise ValueError("An unsaved bundle (a bare checkpoint) has nowhere to keep an OOD gate: build a bundle first.")
    folds = bundle.member_folds
    members = [bundle.members[0].name] if folds else None
    gate = fit_ood_gate(
        bundle, data_root, score=score, quantile=quantile, max_train_images=max_train_images, members=members,
        batch_size=batch_size, device=device, fold=folds[bundle.members[0].name] if folds else None,
    )
    d = gate.save(bundle.path)
    log.info("OOD gate: threshold %.4f gates %.1f%% of held-out images", gate.threshold_, 100 * gate.heldout_gated_fraction_)
    return d
