"""ReviewFlagger: threshold chosen on validation for a stated goal, applied to held-out cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from skinlesion.metrics.classification import UndefinedMetricWarning
from skinlesion.uncertainty import MCResult, ReviewFlagger

# 10 validation cases, most uncertain first; 4 errors (at 0.9, 0.7, 0.4, 0.1)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
CORRECT = np.array([0, 1, 0, 1, 1, 0, 1, 1, 0, 1], dtype=bool)
PERM = np.random.default_rng(0).permutation(10)  # input order must not matter


def test_default_flags_smallest_fraction_removing_half_the_errors():
    flagger = ReviewFlagger().fit(SCORES[PERM], CORRECT[PERM])
    assert flagger.threshold_ == pytest.approx(0.7)
    assert flagger.flagged_fraction_ == pytest.approx(0.3)
    assert flagger.errors_removed_ == pytest.approx(0.5)
    assert flagger.selective_risk_ == pytest.approx(2 / 7)
    assert flagger.flag(SCORES).tolist() == [True] * 3 + [False] * 7
    # three quarters of the errors need the case at 0.4 too
    assert ReviewFlagger(target=0.75).fit(SCORES, CORRECT).threshold_ == pytest.approx(0.4)


def test_max_prob_flags_low_confidence():
    conf = 1.0 - SCORES
    flagger = ReviewFlagger(score="max_prob").fit(conf[PERM], CORRECT[PERM])
    assert flagger.threshold_ == pytest.approx(0.3)
    assert flagger.flag(conf).tolist() == [True] * 3 + [False] * 7
    assert flagger.flag([0.31, 0.3, 0.0]).tolist() == [False, True, True]


def test_ties_are_flagged_together():
    scores = np.array([0.9, 0.9, 0.9, 0.5, 0.1])
    correct = np.array([1, 0, 1, 0, 1])
    flagger = ReviewFlagger().fit(scores, correct)
    assert flagger.threshold_ == 0.9 and flagger.flagged_fraction_ == pytest.approx(0.6)
    coverage = ReviewFlagger(goal="coverage", target=0.4).fit(scores, correct)  # 2 of 5 would split the tie
    assert coverage.flagged_fraction_ == 0.0 and coverage.threshold_ == math.inf


def test_coverage_goal_flags_a_fixed_fraction():
    flagger = ReviewFlagger(goal="coverage", target=0.25).fit(SCORES[PERM], CORRECT[PERM])
    assert flagger.threshold_ == pytest.approx(0.8)
    assert flagger.flagged_fraction_ == pytest.approx(0.2)  # the most that fits the 25% budget
    assert ReviewFlagger(goal="coverage", target=0.3).fit(SCORES, CORRECT).flagged_fraction_ == pytest.approx(0.3)
    assert ReviewFlagger(goal="coverage", target=1.0).fit(SCORES, CORRECT).flagged_fraction_ == 1.0


def test_risk_goal_takes_largest_coverage_within_target():
    # unflagged risk after flagging the top j: 4/10, 3/9, 3/8, 2/7, 2/6, 2/5, 1/4, ...
    flagger = ReviewFlagger(goal="risk", target=0.3).fit(SCORES[PERM], CORRECT[PERM])
    assert flagger.threshold_ == pytest.approx(0.7) and flagger.selective_risk_ == pytest.approx(2 / 7)
    flagger = ReviewFlagger(goal="risk", target=0.25).fit(SCORES, CORRECT)
    assert flagger.threshold_ == pytest.approx(0.4) and flagger.flagged_fraction_ == pytest.approx(0.6)
    assert ReviewFlagger(goal="risk", target=0.4).fit(SCORES, CORRECT).flagged_fraction_ == 0.0
    # target 0: flag down to the last error, at 0.1, keeping only the correct case at 0.05
    flagger = ReviewFlagger(goal="risk", target=0.0).fit(SCORES, CORRECT)
    assert flagger.threshold_ == pytest.approx(0.1) and flagger.selective_risk_ == 0.0
    wrong_last = CORRECT.copy()
    wrong_last[-1] = False
    with pytest.warns(UserWarning, match="every case is flagged"):
        flagger = ReviewFlagger(goal="risk", target=0.0).fit(SCORES, wrong_last)
    assert flagger.flagged_fraction_ == 1.0 and flagger.threshold_ == pytest.approx(0.05)


def test_no_validation_errors_flags_nothing_with_a_warning():
    with pytest.warns(UserWarning, match="no errors"):
        flagger = ReviewFlagger().fit(SCORES, np.ones(10, dtype=bool))
    assert flagger.threshold_ == math.inf and flagger.flagged_fraction_ == 0.0
    assert math.isnan(flagger.errors_removed_)
    assert not flagger.flag(SCORES).any()


def test_evaluate_on_held_out_cases():
    flagger = ReviewFlagger().fit(SCORES, CORRECT)  # threshold 0.7
    scores_test = np.array([0.95, 0.75, 0.7, 0.2, 0.1, 0.0])
    correct_test = np.array([0, 1, 0, 1, 0, 1])
    out = flagger.evaluate(scores_test, correct_test)
    assert out["n"] == 6 and out["n_flagged"] == 3 and out["n_errors"] == 3
    assert out["flagged_fraction"] == pytest.approx(0.5) and out["coverage"] == pytest.approx(0.5)
    assert out["errors_removed"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["accuracy_unflagged"] == pytest.approx(2 / 3)
    assert out["accuracy_flagged"] == pytest.approx(1 / 3)
    with pytest.warns(UndefinedMetricWarning, match="accuracy_flagged"):
        out = flagger.evaluate([0.1, 0.2], [1, 0])
    assert math.isnan(out["accuracy_flagged"]) and out["accuracy_unflagged"] == pytest.approx(0.5)


def test_score_of_an_mc_result():
    result = MCResult.from_samples(np.array([[[0.9, 0.1]], [[0.5, 0.5]]]))
    np.testing.assert_allclose(ReviewFlagger().score_of(result), result.mutual_information)
    np.testing.assert_allclose(ReviewFlagger(score="max_prob").score_of(result), [0.7])


def test_unfitted_use_raises():
    flagger = ReviewFlagger()
    with pytest.raises(RuntimeError, match="call fit first"):
        flagger.flag(SCORES)
    with pytest.raises(RuntimeError, match="call fit first"):
        flagger.evaluate(SCORES, CORRECT)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"score": "entropy"}, "'score' parameter must be one of"),
        ({"goal": "accuracy"}, "'goal' parameter must be one of"),
        ({"target": 0.0}, r"'target' parameter must be a number in \(0, 1\] for goal='error_fraction'. Got 0.0"),
        ({"target": 1.5, "goal": "risk"}, r"'target' parameter must be a number in \[0, 1\] for goal='risk'"),
        ({"target": float("nan"), "goal": "coverage"}, "'target' parameter must be a number"),
        ({"target": True}, "'target' parameter must be a number"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(ValueError, match=match):
        ReviewFlagger(**params).fit(SCORES, CORRECT)


@pytest.mark.parametrize(
    ("scores", "correct", "match"),
    [
        ([], [], "'scores_val' parameter must be a non-empty 1-D array"),
        ([0.1, np.inf], [1, 0], "'scores_val' parameter must hold finite numbers"),
        ([0.1, 0.2], [1, 0, 1], "'correct' parameter must have one entry per score"),
        ([0.1, 0.2], [0.5, 1], "'correct' parameter must hold booleans or 0/1"),
    ],
)
def test_bad_inputs(scores, correct, match):
    with pytest.raises(ValueError, match=match):
        ReviewFlagger().fit(scores, correct)
    flagger = ReviewFlagger().fit(SCORES, CORRECT)
    with pytest.raises(ValueError, match=match.replace("scores_val", "scores_test")):
        flagger.evaluate(scores, correct)
    with pytest.raises(ValueError, match="'scores' parameter must be a 1-D array of finite numbers"):
        flagger.flag([[0.1]])
