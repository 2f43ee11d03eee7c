"""Calibration metrics against hand-computed values, a reference loop and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from skinlesion.metrics import (
    brier_score,
    classwise_ece,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)


def _random(n: int = 500, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.5), size=n)
    y = np.array([rng.choice(k, p=row) for row in p])
    return y, p


def _reference_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Guo et al. (2017) loop: bins (lo, hi], weighted |acc - conf|."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if lo == 0:
            m |= conf == 0
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return total


def test_ece_zero_when_confidence_equals_accuracy() -> None:
    # every prediction has confidence 0.8 and 8 of 10 are right
    p = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed_two_bins() -> None:
    # bin (0.5, 1.0] with n_bins=2: conf 0.9 (right), 0.7 (wrong) -> |0.5 - 0.8| = 0.3, weight 1
    p = np.array([[0.9, 0.1], [0.3, 0.7]])
    y = np.array([0, 0])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.3)


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_matches_reference_loop(n_bins: int) -> None:
    y, p = _random()
    expected = _reference_ece(p.max(axis=1), p.argmax(axis=1) == y, n_bins)
    assert expected_calibration_error(y, p, n_bins=n_bins) == pytest.approx(expected, abs=1e-12)


def test_ece_bin_boundary_belongs_to_lower_bin() -> None:
    # conf exactly 0.6 with 5 bins lies in (0.4, 0.6]; conf 0.61 in (0.6, 0.8]
    p = np.array([[0.6, 0.4], [0.61, 0.39]])
    y = np.array([0, 1])
    curve = reliability_curve(y, p, n_bins=5)
    assert curve["counts"] == [0, 0, 1, 1, 0]


def test_quantile_strategy_uses_equal_mass_bins() -> None:
    y, p = _random(n=400, seed=1)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    order = np.argsort(conf)
    expected = sum(len(b) / 400 * abs(correct[b].mean() - conf[b].mean()) for b in np.array_split(order, 4))
    assert expected_calibration_error(y, p, n_bins=4, strategy="quantile") == pytest.approx(expected, abs=1e-12)


def test_classwise_ece_hand_computed() -> None:
    # one bin: class 0 mean prob 0.5 vs frequency 1.0 -> 0.5; class 1 mean prob 0.5 vs 0 -> 0.5
    p = np.array([[0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0])
    assert classwise_ece(y, p, n_bins=1) == pytest.approx(0.5)
    y2, p2 = _random(seed=2)
    per_class = [_reference_ece(p2[:, k], y2 == k, 10) for k in range(p2.shape[1])]
    assert classwise_ece(y2, p2, n_bins=10) == pytest.approx(float(np.mean(per_class)), abs=1e-12)


def test_reliability_curve_structure_and_consistency() -> None:
    y, p = _random(seed=3)
    curve = reliability_curve(y, p, n_bins=10)
    assert len(curve["edges"]) == 11 and len(curve["counts"]) == 10
    assert sum(curve["counts"]) == len(y) == curve["n"]
    assert curve["ece"] == pytest.approx(expected_calibration_error(y, p, n_bins=10), abs=1e-12)
    for lo, hi, c, conf, acc in zip(curve["edges"][:-1], curve["edges"][1:], curve["counts"], curve["confidence"], curve["accuracy"]):
        if c == 0:
            assert conf is None and acc is None
        else:
            assert lo < conf <= hi and 0.0 <= acc <= 1.0
    # top-label confidence of a 5-class problem is >= 0.2, so the first bin is empty
    assert curve["counts"][0] == 0


def test_nll_matches_sklearn_and_clips_zero_probability() -> None:
    y, p = _random(seed=4)
    assert negative_log_likelihood(y, p) == pytest.approx(log_loss(y, p, labels=range(5)), rel=1e-9)
    p0 = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert negative_log_likelihood([1, 0], p0, eps=1e-6) == pytest.approx((-math.log(1e-6) - math.log(0.5)) / 2)


def test_brier_matches_sklearn_and_range() -> None:
    y, p = _random(seed=5)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p, labels=range(5)), abs=1e-12)
    assert brier_score([0, 1], np.eye(2)) == 0.0
    assert brier_score([1, 0], np.eye(2)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda y, p: expected_calibration_error(y, p, n_bins=0), r"The 'n_bins' parameter must be a positive integer. Got 0"),
        (lambda y, p: expected_calibration_error(y, p, n_bins=2.5), r"The 'n_bins' parameter must be a positive integer"),
        (lambda y, p: expected_calibration_error(y, p, strategy="kde"), r"The 'strategy' parameter must be one of"),
        (lambda y, p: classwise_ece(y, p, strategy="x"), r"The 'strategy' parameter must be one of"),
        (lambda y, p: reliability_curve(y, p, n_bins=-1), r"The 'n_bins' parameter"),
        (lambda y, p: negative_log_likelihood(y, p, eps=0), r"The 'eps' parameter must be a float in \(0, 1\)"),
        (lambda y, p: brier_score(y, p * 3), r"probs row 0 sums to 3"),
        (lambda y, p: expected_calibration_error(y[:-1], p), r"y_true has 1 entries but probs has 2 rows"),
    ],
)
def test_calibration_errors(call, message: str) -> None:
    y = np.array([0, 1])
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    with pytest.raises(ValueError, match=message):
        call(y, p)
