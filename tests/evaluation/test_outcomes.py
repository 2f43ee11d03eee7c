"""The metric pieces of the evaluation path (skinlesion.evaluation.outcomes), on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skinlesion.evaluation import decision_intervals, target_outcomes
from skinlesion.metrics.bootstrap import standard_intervals

CLASSES = ["MEL", "NV", "BCC"]


@pytest.fixture
def decided() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    decision = np.where(rng.random(60) < 0.7, y, rng.integers(0, 3, 60))
    groups = np.arange(60) // 2  # two images per lesion
    return y, decision, groups


def test_decision_intervals_read_the_one_hot_decisions(decided: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, decision, groups = decided
    full = decision_intervals(y, decision, groups, CLASSES, n_boot=40, seed=3)
    assert full == standard_intervals(y, np.eye(3)[decision], groups, CLASSES, n_boot=40, seed=3)
    some = decision_intervals(y, decision, groups, CLASSES, n_boot=40, seed=3, keys=["bacc", "sensitivity_MEL"])
    assert list(some) == ["bacc", "sensitivity_MEL"]
    assert all(some[k] == full[k] for k in some)  # same resamples: a subset does not change the numbers
    assert decision_intervals(y, decision, groups, CLASSES, n_boot=0) is None
    assert decision_intervals(y, decision, groups, CLASSES, n_boot=0, keys=["bacc"]) is None


def test_target_outcomes_check_each_target_by_the_point_estimate() -> None:
    specs = {
        "MEL": {"threshold": 0.3, "status": "met", "rule": "p >= t", "target_sensitivity": 0.8, "target_specificity": 0.5},
        "BCC": {"threshold": None, "status": "infeasible", "target_sensitivity": 0.5, "target_specificity": None},
    }
    per_class = {"MEL": {"sensitivity": 0.8, "specificity": 0.4}, "BCC": {"sensitivity": math.nan, "specificity": None}}
    intervals = {"sensitivity_MEL": {"low": 0.6, "high": 0.9}}
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.1, 0.1, 0.8]])
    mel, bcc = target_outcomes(specs, per_class, intervals, y=y, probs=probs, classes=CLASSES)
    assert (mel["sensitivity_met"], mel["specificity_met"], mel["met"]) == (True, False, False)
    assert mel["sensitivity_ci"] == [0.6, 0.9] and mel["specificity_ci"] is None
    assert (mel["one_vs_rest_sensitivity"], mel["one_vs_rest_specificity"]) == (0.5, 0.5)
    assert (bcc["sensitivity_met"], bcc["specificity_met"], bcc["met"]) == (None, None, False)  # undefined, no target
    assert "one_vs_rest_sensitivity" not in bcc  # no threshold
    assert [r["class"] for r in target_outcomes(specs, per_class, None)] == ["MEL", "BCC"]
