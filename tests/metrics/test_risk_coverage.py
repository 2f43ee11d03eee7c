"""Risk–coverage curve, AURC, optimal AURC and E-AURC on data with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from skinlesion.metrics.risk_coverage import (
    aurc,
    excess_aurc,
    optimal_aurc,
    risk_coverage_curve,
)

CONF = np.array([0.9, 0.8, 0.7, 0.6])
CORRECT = np.array([1, 1, 0, 1])


def test_curve_and_areas_by_hand():
    coverage, risk, thresholds = risk_coverage_curve(CONF, CORRECT, higher_is_confident=True)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.0, 1 / 3, 1 / 4])
    np.testing.assert_allclose(thresholds, CONF)
    assert aurc(CONF, CORRECT, higher_is_confident=True) == pytest.approx((1 / 3 + 1 / 4) / 4)  # 7/48
    assert optimal_aurc(CORRECT) == pytest.approx((1 / 4) / 4)  # the error last: 1/16
    assert excess_aurc(CONF, CORRECT, higher_is_confident=True) == pytest.approx(7 / 48 - 3 / 48)


def test_uncertainty_direction_and_input_order():
    perm = np.array([2, 0, 3, 1])
    unc, correct = 1.0 - CONF[perm], CORRECT[perm]
    coverage, risk, thresholds = risk_coverage_curve(unc, correct, higher_is_confident=False)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.0, 1 / 3, 1 / 4])
    np.testing.assert_allclose(thresholds, [0.1, 0.2, 0.3, 0.4])  # keep score <= threshold
    assert aurc(unc, correct, higher_is_confident=False) == pytest.approx(7 / 48)
    # the wrong direction ranks the error first
    assert aurc(unc, correct, higher_is_confident=True) > 7 / 48


def test_perfect_ranking_has_no_excess():
    correct = np.array([1, 1, 1, 0, 0])
    assert excess_aurc(np.arange(5, 0, -1), correct, higher_is_confident=True) == pytest.approx(0.0, abs=1e-15)
    assert excess_aurc(np.arange(5), correct, higher_is_confident=True) > 0


def test_ties_form_one_point_and_average_over_orderings():
    coverage, risk, _ = risk_coverage_curve([0.5, 0.5], [1, 0], higher_is_confident=True)
    np.testing.assert_allclose(coverage, [1.0])
    np.testing.assert_allclose(risk, [0.5])
    assert aurc([0.5, 0.5], [1, 0], higher_is_confident=True) == pytest.approx(0.5)  # (0.25 + 0.75) / 2
    assert aurc([0.5, 0.5], [0, 1], higher_is_confident=True) == pytest.approx(0.5)

    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    correct = np.array([1, 0, 1, 0, 0])
    tied = [1, 2, 3]
    by_order = []
    for order in itertools.permutations(tied):  # break the tie every way with distinct scores
        broken = scores.copy()
        broken[list(order)] = [0.52, 0.51, 0.50]
        by_order.append(aurc(broken, correct, higher_is_confident=True))
    assert len(set(np.round(by_order, 12))) > 1
    assert aurc(scores, correct, higher_is_confident=True) == pytest.approx(np.mean(by_order))
    assert aurc(scores[::-1], correct[::-1], higher_is_confident=True) == pytest.approx(np.mean(by_order))
    coverage, risk, thresholds = risk_coverage_curve(scores, correct, higher_is_confident=True)
    np.testing.assert_allclose(coverage, [0.2, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 0.6])
    np.testing.assert_allclose(thresholds, [0.9, 0.5, 0.1])


def test_degenerate_inputs():
    coverage, risk, _ = risk_coverage_curve([0.3, 0.2, 0.2], [True, True, True], higher_is_confident=True)
    np.testing.assert_allclose(risk, [0.0, 0.0])
    np.testing.assert_allclose(coverage, [1 / 3, 1.0])
    assert aurc([0.3, 0.2, 0.2], [1, 1, 1], higher_is_confident=True) == 0.0
    assert optimal_aurc([1, 1, 1]) == 0.0
    assert aurc([0.3, 0.2], [0, 0], higher_is_confident=True) == pytest.approx(1.0)
    assert optimal_aurc([0, 0]) == pytest.approx(1.0)
    assert excess_aurc([0.3, 0.2], [0, 0], higher_is_confident=True) == pytest.approx(0.0)
    _, risk, _ = risk_coverage_curve([0.7], [1], higher_is_confident=False)
    np.testing.assert_allclose(risk, [0.0])


@pytest.mark.parametrize(
    ("scores", "correct", "match"),
    [
        ([], [], "'scores' parameter must be a non-empty 1-D array"),
        ([[0.1, 0.2]], [1, 0], "'scores' parameter must be a non-empty 1-D array"),
        ([0.1, np.nan], [1, 0], "'scores' parameter must hold finite numbers"),
        (["a", "b"], [1, 0], "'scores' parameter must hold finite numbers"),
        ([0.1, 0.2], [], "'correct' parameter must be a non-empty 1-D array"),
        ([0.1, 0.2], [1, 2], "'correct' parameter must hold booleans or 0/1"),
        ([0.1, 0.2], [1, 0, 1], r"'correct' parameter must have one entry per score \(2\). Got 3"),
    ],
)
def test_errors_name_the_parameter(scores, correct, match):
    with pytest.raises(ValueError, match=match):
        risk_coverage_curve(scores, correct, higher_is_confident=True)
    with pytest.raises(ValueError, match=match):
        aurc(scores, correct, higher_is_confident=True)


def test_direction_must_be_stated():
    with pytest.raises(TypeError):
        aurc([0.1], [1])  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="'higher_is_confident' parameter must be True"):
        risk_coverage_curve([0.1], [1], higher_is_confident="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'correct' parameter must be a non-empty 1-D array"):
        optimal_aurc([])
