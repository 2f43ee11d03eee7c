"""The BACC-fitted diagnosis rule and the malignancy referral (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest

from skinlesion.calibration.diagnosis import BalancedDiagnosis, cross_validated_gain, select_diagnosis_rule
from skinlesion.calibration.referral import fit_referral, malignant_probability, refer
from skinlesion.metrics.classification import balanced_accuracy

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def _shifted(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities that under-call the rare classes: the true class's logit is +2, but the common
    class NV gets +1.5 everywhere (a model trained on the raw class frequencies)."""
    rng = np.random.default_rng(seed)
    freq = np.array([0.11, 0.67, 0.05, 0.03, 0.11, 0.015, 0.015])
    y = rng.choice(7, size=n, p=freq / freq.sum())
    logits = rng.normal(0, 1.0, (n, 7))
    logits[np.arange(n), y] += 2.0
    logits[:, 1] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    groups = np.arange(n) // 2  # two images per lesion
    return p, y, groups


def test_fitted_weights_raise_bacc_out_of_sample_where_argmax_is_biased() -> None:
    p, y, g = _shifted()
    gain = cross_validated_gain(p, y, g, limit=2.0, seeds=(0,))
    assert gain["gain"] > 0.05  # the NV bias is undone on rows the rule never saw
    rule = BalancedDiagnosis(limit=2.0).fit(p, y)
    assert rule.log_weights_[1] < rule.log_weights_[[0, 2, 3, 4, 5, 6]].min()  # NV weighted down most
    p2, y2, _ = _shifted(seed=1)
    assert balanced_accuracy(y2, rule.predict(p2), 7) > balanced_accuracy(y2, p2.argmax(1), 7) + 0.05


def test_selection_keeps_argmax_when_weights_do_not_help() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, 1400)
    logits = rng.normal(0, 1, (1400, 7))
    logits[np.arange(1400), y] += 1.0  # balanced classes, unbiased: argmax is already right
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rule, report = select_diagnosis_rule(p, y, np.arange(1400), limits=(0.25, 1.0))
    if report["chosen_limit"] is None:
        assert np.array_equal(rule.predict(p), p.argmax(1)) and "argmax" in report["why"]
    else:  # a chosen rule must have beaten argmax out of sample
        assert max(t["gain"] for t in report["trials"]) > 0


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact posteriors of an imbalanced problem: z ~ N(2 e_y, I), p(y | z) = softmax(2 z + log pi)."""
    rng = np.random.default_rng(seed)
    freq = np.array([0.11, 0.67, 0.05, 0.03, 0.11, 0.015, 0.015])
    y = rng.choice(7, size=n, p=freq)
    z = rng.normal(0, 1, (n, 7))
    z[np.arange(n), y] += 2.0
    logits = 2 * z + np.log(freq)
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y


def test_calibrated_probabilities_need_the_prior_start() -> None:
    p, y = _calibrated(4000, 0)
    p2, y2 = _calibrated(4000, 1)
    from_prior = BalancedDiagnosis(limit=0.25, start="prior").fit(p, y)
    from_argmax = BalancedDiagnosis(limit=0.25).fit(p, y)
    assert balanced_accuracy(y2, from_prior.predict(p2), 7) > balanced_accuracy(y2, from_argmax.predict(p2), 7) + 0.05
    rule, report = select_diagnosis_rule(p, y, np.arange(4000), limits=(0.25,))
    assert rule.start == "prior" and report["why"].startswith("start prior")
    assert BalancedDiagnosis.from_dict(rule.to_dict(CLASSES), CLASSES).start == "prior"
    with pytest.raises(ValueError, match=r"'start' parameter must be one of \('argmax', 'prior'\)"):
        BalancedDiagnosis(start="uniform").fit(p, y)


def test_too_few_held_out_lesions_give_argmax_with_the_reason() -> None:
    p, y, _ = _shifted(n=40)
    rule, report = select_diagnosis_rule(p, y, np.arange(40) // 8)  # 5 lesions: under 2 per fold
    assert np.array_equal(rule.predict(p), p.argmax(1)) and report["trials"] == []
    assert "only 5 lesions held out" in report["why"] and report["chosen_limit"] is None


def test_rule_round_trips_through_bundle_json() -> None:
    p, y, _ = _shifted()
    rule = BalancedDiagnosis(limit=1.0).fit(p, y)
    again = BalancedDiagnosis.from_dict(rule.to_dict(CLASSES), CLASSES)
    np.testing.assert_array_equal(again.predict(p), rule.predict(p))
    with pytest.raises(ValueError, match="log_weights for exactly the classes"):
        BalancedDiagnosis.from_dict({"log_weights": {"MEL": 0.0}}, CLASSES)


def test_diagnosis_errors_name_the_parameter() -> None:
    with pytest.raises(RuntimeError, match="not fitted yet"):
        BalancedDiagnosis().predict(np.ones((2, 7)) / 7)
    with pytest.raises(ValueError, match="'y' parameter must hold 3 labels"):
        BalancedDiagnosis().fit(np.ones((3, 7)) / 7, [0, 1])
    with pytest.raises(ValueError, match="'limit' parameter must be a positive number"):
        BalancedDiagnosis(limit=0).fit(np.ones((3, 7)) / 7, [0, 1, 2])


def test_referral_meets_its_sensitivity_bound_with_the_highest_threshold() -> None:
    p, y, _ = _shifted(n=4000)
    ref = fit_referral(p, y, CLASSES, sensitivity=0.95, confidence=0.95)
    assert ref["status"] == "met" and ref["malignant_classes"] == ["MEL", "BCC", "AKIEC"]
    assert ref["sensitivity_lower"] >= 0.95
    score = malignant_probability(p, CLASSES)
    malignant = np.isin(y, [0, 2, 3])
    flagged = refer(p, CLASSES, ref)
    assert flagged.sum() == (score >= ref["threshold"]).sum()
    assert ref["specificity"] == pytest.approx(float((~flagged[~malignant]).mean()))
    # the next higher threshold would lose the sensitivity guarantee
    higher = np.unique(score[score > ref["threshold"]])[0]
    from skinlesion.calibration.thresholds import lower_bound

    tp = int((score[malignant] >= higher).sum())
    assert lower_bound(np.array([tp]), np.array([int(malignant.sum())]), 0.95)[0] < 0.95


def test_referral_refuses_class_sets_without_malignancy_and_unfitted_rules() -> None:
    with pytest.raises(ValueError, match="no malignant class"):
        malignant_probability(np.ones((2, 2)) / 2, ("NV", "BKL"))
    with pytest.raises(ValueError, match="has no threshold"):
        refer(np.ones((2, 7)) / 7, CLASSES, {"threshold": None})
