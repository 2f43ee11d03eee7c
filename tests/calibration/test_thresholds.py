from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from skinlesion.calibration.decision import decide, resolve_priority
from skinlesion.calibration.thresholds import (
    Target,
    ThresholdCalibrator,
    lower_bound,
    parse_targets,
    search_threshold,
)


def _grid(n_pos: int = 100, n_neg: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Positives score 0.51..1.00, negatives 0.00..0.49: a threshold t gives known rates."""
    pos = np.linspace(0.51, 1.0, n_pos)
    neg = np.linspace(0.0, 0.49, n_neg)
    return np.r_[pos, neg], np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]


def test_point_estimate_search_finds_the_known_threshold() -> None:
    # Positives at 0..99 (score i/100), negatives at 0..99 shifted down by 0.3: overlap known exactly.
    pos = np.arange(100) / 100
    neg = np.arange(100) / 100 - 0.3
    s = np.r_[pos, neg]
    y = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    ch = search_threshold(s, y, Target("MEL", 0.80, 0.50), confidence=None, prefer="sensitivity")
    # sensitivity >= 0.80 needs t <= 0.20; specificity >= 0.50 needs t > 0.19 (50 negatives below 0.2)
    assert ch.status == "met"
    assert ch.threshold == pytest.approx(0.20)
    assert ch.sensitivity == pytest.approx(0.80) and ch.specificity == pytest.approx(0.50)
    spec_first = search_threshold(s, y, Target("MEL", 0.80, 0.50), confidence=None, prefer="specificity")
    assert spec_first.threshold == pytest.approx(0.20)  # the feasible set is a single threshold


def test_confidence_bound_picks_a_stricter_threshold_than_the_point_estimate() -> None:
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(2, 1, 150), rng.normal(0, 1, 3000)]
    y = np.r_[np.ones(150, bool), np.zeros(3000, bool)]
    target = Target("MEL", 0.85, 0.0)
    point = search_threshold(s, y, target, confidence=None, prefer="specificity")
    bounded = search_threshold(s, y, target, confidence=0.95, prefer="specificity")
    assert bounded.threshold < point.threshold  # lower threshold = more sensitive = stricter on the target
    assert bounded.sensitivity > point.sensitivity
    assert bounded.sensitivity_lower >= 0.85
    tp_point = int(round(point.sensitivity * 150))
    assert beta.ppf(0.05, tp_point, 150 - tp_point + 1) < 0.85  # the point choice fails its own bound
    # Clopper-Pearson by hand at the chosen threshold
    tp = int(round(bounded.sensitivity * 150))
    assert bounded.sensitivity_lower == pytest.approx(beta.ppf(0.05, tp, 150 - tp + 1))


def test_bounded_threshold_holds_on_unseen_data_more_often() -> None:
    """Fit on many small validation sets; the bound keeps test sensitivity >= target far more often."""
    rng = np.random.default_rng(1)

    def draw(n_pos: int, n_neg: int) -> tuple[np.ndarray, np.ndarray]:
        return np.r_[rng.normal(2, 1, n_pos), rng.normal(0, 1, n_neg)], np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]

    hits = {None: 0, 0.95: 0}
    trials = 60
    s_test, y_test = draw(20000, 10)
    for _ in range(trials):
        s, y = draw(140, 1000)
        for conf in hits:
            t = search_threshold(s, y, Target("MEL", 0.85, 0.0), confidence=conf, prefer="specificity").threshold
            hits[conf] += float((s_test[y_test] >= t).mean()) >= 0.85
    assert hits[0.95] / trials >= 0.85
    assert hits[None] / trials <= 0.75


def test_wilson_bound_is_close_to_clopper_pearson() -> None:
    k, n = np.array([85, 170]), np.array([100, 200])
    cp = lower_bound(k, n, 0.95, "clopper-pearson")
    wi = lower_bound(k, n, 0.95, "wilson")
    assert np.all(cp < k / n) and np.all(wi < k / n)
    np.testing.assert_allclose(cp, wi, atol=0.02)
    assert lower_bound(np.array([0]), np.array([10]), 0.95)[0] == 0.0


def test_infeasible_targets_are_reported_with_the_fallback() -> None:
    rng = np.random.default_rng(2)
    s = np.r_[rng.normal(0.5, 1, 200), rng.normal(0, 1, 2000)]  # weak separation
    y = np.r_[np.ones(200, bool), np.zeros(2000, bool)]
    ch = search_threshold(s, y, Target("AKIEC", 0.9, 0.9))
    assert ch.status == "infeasible"
    assert "no threshold gives both sensitivity >= 0.9 and specificity >= 0.9" in ch.reason
    assert ch.rule == "keep_sensitivity"
    assert ch.sensitivity_lower >= 0.9  # the fallback keeps the sensitivity target...
    higher = search_threshold(s, y, Target("AKIEC", 0.9, 0.0), prefer="specificity")
    assert ch.threshold == higher.threshold  # ...at the highest threshold that does (max specificity)
    none = search_threshold(s, y, Target("AKIEC", 0.9, 0.9), fallback="none")
    assert none.threshold is None and none.status == "infeasible"
    keep_spec = search_threshold(s, y, Target("AKIEC", 0.9, 0.9), fallback="keep_specificity")
    assert keep_spec.specificity_lower >= 0.9


def test_too_few_positives_for_the_bound_falls_back_to_the_point_estimate() -> None:
    s, y = _grid(n_pos=5, n_neg=50)
    ch = search_threshold(s, y, Target("DF", 0.85, 0.5))
    assert ch.status == "infeasible" and "point estimate" in ch.rule
    assert "even the lowest threshold has sensitivity bound" in ch.reason
    assert ch.sensitivity >= 0.85


def test_parse_targets() -> None:
    t = parse_targets(["MEL:sens=0.85,spec=0.85", "AKIEC:sensitivity=0.75"])
    assert t == [Target("MEL", 0.85, 0.85), Target("AKIEC", 0.75, 0.0)]
    assert parse_targets("MEL:spec=0.9 BCC:sens=0.8") == [Target("MEL", 0.0, 0.9), Target("BCC", 0.8, 0.0)]
    with pytest.raises(ValueError, match="not of the form CLASS:sens=0.85,spec=0.85"):
        parse_targets(["MEL"])
    with pytest.raises(ValueError, match="unknown rate 'ppv'"):
        parse_targets(["MEL:ppv=0.5"])
    with pytest.raises(ValueError, match="needs a number"):
        parse_targets(["MEL:sens=high"])
    with pytest.raises(ValueError, match="sensitivity must be a number in \\[0, 1\\)"):
        parse_targets(["MEL:sens=1.5"])
    with pytest.raises(ValueError, match="two targets"):
        parse_targets(["MEL:sens=0.8", "MEL:spec=0.8"])


def test_search_errors() -> None:
    s, y = _grid()
    with pytest.raises(ValueError, match="'prefer' parameter must be one of"):
        search_threshold(s, y, Target("MEL", 0.5), prefer="max")
    with pytest.raises(ValueError, match="'fallback' parameter must be one of"):
        search_threshold(s, y, Target("MEL", 0.5), fallback="guess")
    with pytest.raises(ValueError, match="'confidence' parameter must be in"):
        search_threshold(s, y, Target("MEL", 0.5), confidence=1.2)
    with pytest.raises(ValueError, match="0 positive and 200 negative"):
        search_threshold(s, np.zeros_like(y), Target("MEL", 0.5))


CLASSES = ["MEL", "NV", "BCC", "AKIEC"]


def test_decision_rule_priority_then_argmax_of_untargeted() -> None:
    probs = np.array(
        [
            [0.30, 0.60, 0.05, 0.05],  # MEL reaches 0.25 -> MEL although NV is the argmax
            [0.20, 0.30, 0.00, 0.50],  # MEL below; AKIEC reaches 0.4 -> AKIEC
            [0.28, 0.02, 0.00, 0.70],  # both reach: MEL has priority
            [0.20, 0.10, 0.40, 0.30],  # nothing fires -> argmax among untargeted (NV, BCC) = BCC
            [0.24, 0.20, 0.20, 0.36],  # AKIEC is the argmax but below its threshold -> not AKIEC
        ]
    )
    thresholds = {"MEL": 0.25, "AKIEC": 0.4}
    d, fired = decide(probs, CLASSES, thresholds, return_reason=True)
    assert d.tolist() == [0, 3, 0, 2, 1]
    assert fired.tolist() == [0, 3, 0, -1, -1]
    d2 = decide(probs, CLASSES, thresholds, priority=["AKIEC", "MEL"])
    assert d2[2] == 3  # the other priority order changes the conflict
    np.testing.assert_array_equal(decide(probs, CLASSES, {}), probs.argmax(1))


def test_highest_priority_class_keeps_its_one_vs_rest_rates() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), 500)
    y = rng.integers(0, 4, 500)
    cal = ThresholdCalibrator([Target("MEL", 0.6, 0.3), Target("AKIEC", 0.5, 0.3)], confidence=None).fit(probs, y, CLASSES)
    d = cal.predict(probs)
    t = cal.thresholds_["MEL"]
    np.testing.assert_array_equal(d == 0, probs[:, 0] >= t)
    assert cal.priority_[:2] == ["MEL", "BCC"]
    assert resolve_priority(CLASSES, ["AKIEC"])[:2] == ["AKIEC", "MEL"]


def test_calibrator_errors() -> None:
    probs = np.full((4, 4), 0.25)
    with pytest.raises(ValueError, match="not among the model's classes"):
        ThresholdCalibrator([Target("SCC", 0.5)]).fit(probs, np.arange(4), CLASSES)
    with pytest.raises(RuntimeError, match="call fit"):
        ThresholdCalibrator([Target("MEL", 0.5)]).predict(probs)
    with pytest.raises(ValueError, match="unknown class\\(es\\) \\['XX'\\]"):
        decide(probs, CLASSES, {"XX": 0.5})
    with pytest.raises(ValueError, match="'priority' parameter names unknown"):
        resolve_priority(CLASSES, ["MEL", "SCC"])


def test_ratio_conflict_rule_picks_the_class_furthest_above_its_threshold() -> None:
    probs = np.array(
        [
            [0.20, 0.30, 0.00, 0.50],  # both fire: MEL 0.2/0.1 = 2 < AKIEC 0.5/0.2 = 2.5 -> AKIEC
            [0.40, 0.30, 0.05, 0.25],  # both fire: MEL 4 > AKIEC 1.25 -> MEL
            [0.05, 0.50, 0.20, 0.25],  # only AKIEC fires
        ]
    )
    thresholds = {"MEL": 0.1, "AKIEC": 0.2}
    assert decide(probs, CLASSES, thresholds).tolist() == [0, 0, 3]  # priority: MEL wins every conflict
    assert decide(probs, CLASSES, thresholds, conflict="ratio").tolist() == [3, 0, 3]
    with pytest.raises(ValueError, match="'conflict' parameter must be one of"):
        decide(probs, CLASSES, thresholds, conflict="vote")
