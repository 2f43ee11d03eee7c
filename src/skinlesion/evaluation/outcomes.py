"""What an evaluation measures on one split, as pure functions of labels, probabilities and decisions.

* :func:`argmax_outcomes`: every metric of the most probable class, with lesion-bootstrap 95%
  intervals (cluster bootstrap, Davison & Hinkley 1997; see :mod:`skinlesion.metrics.bootstrap`).
* :func:`decision_outcomes`: the same for the bundle's decision rule (thresholds + priority), and
  per targeted class whether the sensitivity and specificity targets hold (:func:`target_outcomes`).
* :func:`diagnosis_outcomes`: the same for the diagnosis (fitted for balanced accuracy), and its
  BACC minus the argmax's with a paired lesion-bootstrap interval.
* :func:`flag_outcomes` and :func:`referral_outcomes`: sensitivity and specificity of each class
  flag (``p >= t``, one-vs-rest, whatever the diagnosis) and of the malignancy referral, with
  intervals, and whether the targets hold.
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
from skinlesion.calibration.referral import malignant_probability
from skinlesion.classes import malignant_indices
from skinlesion.metrics.bootstrap import bootstrap_ci, bootstrap_difference_ci, standard_intervals, standard_metric_fns
from skinlesion.metrics.calibration import brier_score, expected_calibration_error, negative_log_likelihood, reliability_curve
from skinlesion.metrics.classification import balanced_accuracy, compute_classification_metrics

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


def diagnosis_outcomes(
    y: np.ndarray, probs: np.ndarray, diagnosis: np.ndarray, bundle: Bundle, groups: np.ndarray, n_boot: int, seed: int,
    *, operating_point: str = WITH_METADATA,
) -> dict[str, Any]:
    """Metrics of the diagnosis with intervals, the rule that gave it, and ``gain_over_argmax``: its
    BACC minus the argmax's on the same images, with a paired lesion-bootstrap interval."""
    classes = list(bundle.classes)
    metrics = compute_classification_metrics(y, probs, classes, y_pred=diagnosis)
    intervals = decision_intervals(y, diagnosis, groups, classes, n_boot=n_boot, seed=seed)
    k = len(classes)
    gain = (
        bootstrap_difference_ci(
            diagnosis, probs.argmax(axis=1), groups, lambda t, d: balanced_accuracy(t, d, k), y_true=y, n_boot=n_boot,
            seed=seed, name="diagnosis BACC - argmax BACC",
        )
        if n_boot and len(set(groups)) > 1
        else {"estimate": float(balanced_accuracy(y, diagnosis, k) - balanced_accuracy(y, probs.argmax(axis=1), k))}
    )
    spec = bundle.diagnosis_spec(operating_point)
    return {
        "rule": "argmax" if spec is None else spec.rule,
        "log_weights": dict(zip(classes, bundle.diagnosis_weights(operating_point).tolist(), strict=True)),
        "metrics": metrics, "intervals": intervals, "gain_over_argmax": gain,
    }


def binary_rates(
    positive: np.ndarray, hit: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int = 0
) -> dict[str, Any]:
    """Sensitivity (``hit`` among ``positive``) and specificity (no hit among the others), their
    counts, and lesion-bootstrap 95% intervals (None when ``n_boot`` is 0 or one lesion only)."""
    pos, h = np.asarray(positive, bool), np.asarray(hit, bool)

    def sens(t: np.ndarray, p: np.ndarray) -> float:
        return float(p[t == 1, 1].mean()) if (t == 1).any() else float("nan")

    def spec(t: np.ndarray, p: np.ndarray) -> float:
        return float(p[t == 0, 0].mean()) if (t == 0).any() else float("nan")

    t, p = pos.astype(np.int64), np.stack([~h, h], axis=1).astype(np.float64)
    out: dict[str, Any] = {
        "sensitivity": sens(t, p), "specificity": spec(t, p), "n_positive": int(pos.sum()), "n_negative": int((~pos).sum()),
        "sensitivity_ci": None, "specificity_ci": None,
    }
    if n_boot and len(set(np.asarray(groups).tolist())) > 1:
        iv = bootstrap_ci(t, p, groups, {"sensitivity": sens, "specificity": spec}, n_boot=n_boot, seed=seed)
        out["sensitivity_ci"] = [iv["sensitivity"]["low"], iv["sensitivity"]["high"]]
        out["specificity_ci"] = [iv["specificity"]["low"], iv["specificity"]["high"]]
    return out


def _target_rows(spec: ThresholdSpec, rates: dict[str, Any]) -> dict[str, Any]:
    row = {
        "threshold": spec.threshold, "validation_status": spec.status, "rule": spec.rule,
        "target_sensitivity": spec.target_sensitivity, "target_specificity": spec.target_specificity, **rates,
    }
    for key in RATES:
        goal = row[f"target_{key}"] or None
        row[f"{key}_met"] = _met(rates[key], goal)
        ci = rates[f"{key}_ci"]
        row[f"{key}_met_by_lower_bound"] = _met(ci[0], goal) if ci else None
    row["met"] = all(row[f"{key}_met"] is not False for key in RATES)
    return row


def flag_outcomes(
    y: np.ndarray, probs: np.ndarray, bundle: Bundle, groups: np.ndarray, n_boot: int, seed: int,
    *, operating_point: str = WITH_METADATA,
) -> list[dict[str, Any]]:
    """Per thresholded class: the flag ``p >= t`` (one-vs-rest, independent of the diagnosis), its
    sensitivity and specificity with intervals, and whether each target holds (point estimate and
    interval's lower end)."""
    classes = list(bundle.classes)
    rows = []
    for c, spec in bundle.threshold_specs(operating_point).items():
        if spec.threshold is None:
            continue
        j = classes.index(c)
        rates = binary_rates(y == j, probs[:, j] >= spec.threshold, groups, n_boot=n_boot, seed=seed)
        rows.append({"class": c, **_target_rows(spec, rates)})
    return rows


def referral_outcomes(
    y: np.ndarray, probs: np.ndarray, bundle: Bundle, groups: np.ndarray, n_boot: int, seed: int,
    *, operating_point: str = WITH_METADATA,
) -> dict[str, Any] | None:
    """The malignancy referral's sensitivity and specificity (malignant vs benign lesions) with
    intervals and whether the sensitivity target holds; None when the bundle has no referral."""
    spec = bundle.referral_spec(operating_point)
    if spec is None:
        return None
    classes = list(bundle.classes)
    hit = malignant_probability(probs, classes) >= float(spec.threshold)  # type: ignore[arg-type]
    rates = binary_rates(np.isin(y, malignant_indices(classes)), hit, groups, n_boot=n_boot, seed=seed)
    return {"malignant_classes": spec.malignant_classes, "referred_fraction": float(hit.mean()), **_target_rows(spec, rates)}


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
