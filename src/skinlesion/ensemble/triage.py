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
from skinlesion.ensemble.bundle import Bundle, load_bundle
from skinlesion.ensemble.split import load_bundle_split
from skinlesion.ood.gate import OODGate

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


def fit_ood_gate(
    bundle: Any,
    data_root: str | None = None,
    *,
    score: str = "knn",
    quantile: float = 0.95,
    max_train_images: int | None = 2000,
    max_heldout_images: int | None = None,
    members: Sequence[str] | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: str | None = None,
    fold: int | None = None,
) -> OODGate:
    """Fit an :class:`OODGate` for a bundle (a :class:`~skinlesion.ensemble.bundle.Bundle` or its folder):
    scores on (a random ``max_train_images`` subset of) the ``train`` split the members were trained
    on, the threshold on (``max_heldout_images`` of) the ``val`` split. ``fold`` (a cross-fitted bundle,
    with ``members`` naming the member that held that fold out): "train" is the other folds and "val"
    fold ``fold``."""
    from skinlesion.ood.features import table_features

    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    used = [m for m in b.members if members is None or m.name in members]
    rng = np.random.default_rng(seed)

    def rows(n: int, cap: int | None) -> np.ndarray:
        return np.arange(n) if cap is None or cap >= n else np.sort(rng.choice(n, cap, replace=False))

    train = load_bundle_split(b, "train", data_root, fold=fold)
    val = load_bundle_split(b, "val", data_root, fold=fold)
    r_train, r_val = rows(len(train), max_train_images), rows(len(val), max_heldout_images)
    log.info("OOD gate (%s): features of %d training and %d validation images", score, len(r_train), len(r_val))
    if score == "knn" and params is None:  # k = 50 (the measured default), fewer on small training sets
        params = {"k": min(50, max(1, len(r_train) // 10))}
    f_train = table_features(used, train, rows=r_train, batch_size=batch_size, device=device)
    f_val = table_features(used, val, rows=r_val, batch_size=batch_size, device=device)
    gate = OODGate(score, quantile=quantile, members=members, params=params).fit(f_train, f_val, train.labels()[r_train])
    gate.provenance_ = {
        "fitted_on": "train (scores), val (threshold)" if fold is None else f"train folds (scores), fold {fold} held out (threshold)",
        "train_images": len(r_train),
        "heldout_images": len(r_val),
        "seed": seed,
        "split_hash": b.spec.provenance.split_hash,
    }
    return gate


def fit_bundle_ood(
    bundle: Bundle, data_root: str | None = None, *, score: str = "knn", quantile: float = 0.95,
    max_train_images: int | None = 2000, batch_size: int = 32, device: str | None = None,
) -> dict[str, Any]:
    """Fit the out-of-distribution gate of a saved bundle, write its arrays beside bundle.json and
    return what ``decision.ood`` records.

    A cross-fitted bundle's gate uses its first member only: its scores on the rows it trained on,
    its threshold on its own held-out fold (the other members' training rows include that fold)."""
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
