"""The referral: one triage output for a screening clinic, "refer" when a malignancy cannot be excluded.

The score is the probability that the lesion is malignant, the sum of the calibrated probabilities of
the malignant classes present (MEL, BCC, AKIEC, SCC: :data:`skinlesion.classes.MALIGNANT`). The
threshold is the highest one whose one-sided lower confidence bound of malignant sensitivity still
reaches the target (default 0.95), i.e. the most specific referral rule that keeps the sensitivity
guarantee (:func:`skinlesion.calibration.thresholds.search_threshold` with ``prefer="specificity"``),
fitted on held-out predictions only. Its measured specificity is recorded beside it: that is how many
benign lesions a clinic sends on to get that sensitivity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skinlesion.calibration.thresholds import Target, search_threshold
from skinlesion.classes import malignant_indices


def malignant_probability(probs: Any, classes: Sequence[str]) -> np.ndarray:
    """``(N,)`` sum of the malignant classes' probabilities of ``probs`` ``(N, K)``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"The 'probs' parameter must be an (N, {len(classes)}) array. Got shape {p.shape}.")
    idx = malignant_indices(classes)
    if not idx:
        raise ValueError(f"The classes {list(classes)} hold no malignant class (MEL, BCC, AKIEC, SCC): no referral score.")
    return p[:, idx].sum(axis=1)


def fit_referral(
    probs: Any,
    y: Any,
    classes: Sequence[str],
    *,
    sensitivity: float = 0.95,
    confidence: float | None = 0.95,
    bound: str = "clopper-pearson",
) -> dict[str, Any]:
    """The referral threshold fitted on held-out ``probs`` ``(N, K)`` with labels ``y`` ``(N,)``.

    Returns what bundle.json records: the threshold, the malignant classes, the target, and the
    held-out sensitivity/specificity with their lower bounds (``status`` "met", or "infeasible" with
    the reason when even the lowest threshold cannot reach the bound: then the highest threshold whose
    point estimate reaches it)."""
    scores = malignant_probability(probs, classes)
    t = np.asarray(y)
    if t.shape != scores.shape:
        raise ValueError(f"The 'y' parameter must hold {scores.size} labels. Got shape {t.shape}.")
    positive = np.isin(t, malignant_indices(classes))
    choice = search_threshold(
        scores, positive, Target("malignant", sensitivity=sensitivity), confidence=confidence, bound=bound,
        prefer="specificity", fallback="keep_sensitivity",
    )
    return {
        **choice.to_dict(),
        "score": "sum of the calibrated probabilities of the malignant classes",
        "malignant_classes": [classes[i] for i in malignant_indices(classes)],
    }


def refer(probs: Any, classes: Sequence[str], referral: Mapping[str, Any]) -> np.ndarray:
    """``(N,)`` True where the malignant probability reaches the fitted threshold."""
    threshold = referral.get("threshold")
    if threshold is None:
        raise ValueError("The referral has no threshold: fit it with fit_referral (skinlesion calibrate).")
    return malignant_probability(probs, classes) >= float(threshold)
