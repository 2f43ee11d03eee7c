"""What an evaluation measures on one split, as pure functions of labels, probabilities and decisions.

* :func:`argmax_outcomes`: every metric of the most probable class, with lesion-bootstrap 95%
  intervals (cluster bootstrap, Davison & Hinkley 1997; see :mod:`skinlesion.metrics.bootstrap`).
* :func:`decision_outcomes`: the same for the bundle's decision rule (thresholds + priority), and
  per targeted class whether the sensitivity and specificity targets hold (:func:`target_outcomes`).
* :func:`calibration_change`: ECE/NLL before and after temperature scaling (Guo et al., ICML 2017).
* :func:`probability_calibration`: ECE, NLL, Brier score and the reliability curve of probabilities.

``skinlesion evaluate`` and the benchmarks (``bench/quality.py``, ``bench/decision_quality.py``)
call these, so a number means the same wherever it is printed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skinlesion.ensemble.bundle import WITH_METADATA, Bundle
from skinlesion.ensemble.bundle_schema import ThresholdSpec
from skinlesion.metrics.bootstrap import bootstrap_ci, standard_intervals, standard_metric_fns
from skinlesion.metrics.calibration import brier_score, expected_calibration_error, negative_log_likelihood, reliability_curve
from skinlesion.metrics.classification import compute_classification_metrics

RATES = ("sensitivity", "specificity")


def argmax_outcomes(
    y: np.ndarray, probs: np.ndarray, groups: np.ndarray, classes: Sequence[str], *, n_boot: int, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Metrics of ``argmax(probs)`` ``(N, K)`` and their lesion-bootstrap intervals (None when ``n_boot`` is 0)."""
    classes = list(classes)
    return compute_classification_metrics(y, probs, classes), standard_intervals(
        y, probs, groups, classes, n_boot=n_boot, seed=seed
    )


def decision_intervals(
    y: np.ndarray, decision: np.ndarray, groups: np.ndarray, classes: Sequence[str], *, n_boot: int, seed: int = 0,
    keys: Sequence[str] | None = None,
) -> dict[str, Any] | None:
    """Lesion-bootstrap intervals of the metrics of hard decisions ``(N,)`` (None when ``n_boot`` is 0).

    The metrics read the one-hot decisions; ``keys`` restricts them to some of
    :func:`~skinlesion.metrics.bootstrap.standard_metric_fns` (same resamples: the values do not change).
    """
    onehot = np.eye(len(classes))[decision]
    if keys is None:
        return standard_intervals(y, onehot, groups, classes, n_boot=n_boot, seed=seed)
    if n_boot == 0:
        return None
    fns = standard_metric_fns(classes, present=np.unique(y))
    return bootstrap_ci(y, onehot, groups, {k: fns[k] for k in keys}, n_boot=n_boot, seed=seed)


def _met(value: float | None, goal: float | None) -> bool | None:
    if goal is None or value is None or not math.isfinite(value):
        return None
    return bool(value >= goal)


def target_outcomes(
    specs: Mapping[str, ThresholdSpec | Mapping[str, Any]],
    per_class: Mapping[str, Mapping[str, Any]],
    intervals: Mapping[str, Mapping[str, Any]] | None,
    *,
    y: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per targeted class: its threshold and targets (``specs``: ``bundle.json`` threshold
    choices, :meth:`Bundle.threshold_specs` or their dicts), the sensitivity and specificity of the decisions (``per_class``) with their intervals,
    and whether each target is met by the point estimate (None: undefined or no target).

    With ``y``, ``probs`` ``(N, K)`` and ``classes``, a class with a threshold also gets the rates of
    the one-vs-rest rule ``p >= t`` before priority conflicts.
    """
    rows = []
    for c, given in specs.items():
        spec = given if isinstance(given, ThresholdSpec) else ThresholdSpec.model_validate(given)
        pc = per_class[c]
        row: dict[str, Any] = {
            "class": c,
            "threshold": spec.threshold,
            "validation_status": spec.status,
            "rule": spec.rule,
            "target_sensitivity": spec.target_sensitivity,
            "target_specificity": spec.target_specificity,
            "sensitivity": pc["sensitivity"],
            "specificity": pc["specificity"],
        }
        for key in RATES:
            iv = (intervals or {}).get(f"{key}_{c}", {})
            row[f"{key}_ci"] = [iv.get("low"), iv.get("high")] if iv else None
            row[f"{key}_met"] = _met(pc[key], row[f"target_{key}"])
        row["met"] = bool(row["sensitivity_met"] and row["specificity_met"])
        if spec.threshold is not None and probs is not None:
            j = list(classes or ()).index(c)
            hit, pos = probs[:, j] >= spec.threshold, y == j
            row["one_vs_rest_sensitivity"] = float(hit[pos].mean()) if pos.any() else None
            row["one_vs_rest_specificity"] = float((~hit[~pos]).mean()) if (~pos).any() else None
        rows.append(row)
    return rows


def decision_outcomes(
    y: np.ndarray, probs: np.ndarray, decision: np.ndarray, bundle: Bundle, groups: np.ndarray, n_boot: int, seed: int,
    *, operating_point: str = WITH_METADATA,
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """Metrics of the decision rule, their lesion-bootstrap intervals, and the target table (the
    thresholds and targets of ``operating_point``)."""
    classes = list(bundle.classes)
    metrics = compute_classification_metrics(y, probs, classes, y_pred=decision)
    intervals = decision_intervals(y, decision, groups, classes, n_boot=n_boot, seed=seed)
    targets = target_outcomes(
        bundle.threshold_specs(operating_point), metrics["per_class"], intervals, y=y, probs=probs, classes=classes
    )
    return metrics, intervals, targets


def calibration_change(
    y: np.ndarray, bundle: Bundle, view_logits: Sequence[np.ndarray], operating_point: str = WITH_METADATA
) -> dict[str, Any]:
    """ECE/NLL of the bundle's (TTA) ensemble before and after the temperature scaling of
    ``operating_point``, and its temperatures."""
    before = np.exp(bundle.log_probs(view_logits, calibrated=False))
    after = np.exp(bundle.log_probs(view_logits, operating_point=operating_point))
    return {
        "ece_before": expected_calibration_error(y, before),
        "ece_after": expected_calibration_error(y, after),
        "nll_before": negative_log_likelihood(y, before),
        "nll_after": negative_log_likelihood(y, after),
        "temperature": bundle.temperatures_for(operating_point),
    }


def probability_calibration(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """ECE, NLL, Brier score and the reliability curve of probabilities ``(N, K)``."""
    return {
        "ece": expected_calibration_error(y, probs),
        "nll": negative_log_likelihood(y, probs),
        "brier": brier_score(y, probs),
        "reliability": reliability_curve(y, probs),
    }
