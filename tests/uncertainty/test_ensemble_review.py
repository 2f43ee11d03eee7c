"""The review flag scored on the members x TTA views of the prediction itself (review.method "ensemble")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.engine import Predictor
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.uncertainty import mc_predict
from skinlesion.uncertainty.ensemble_samples import ENSEMBLE, cache_outputs, review_method, view_samples
from skinlesion.uncertainty.review_fit import fit_review_flag

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def work(calibrated_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(calibrated_bundle, dst)
    return dst


def test_members_and_views_are_the_samples_with_the_bundles_weights_and_temperatures(calibrated_bundle: Path) -> None:
    bundle = load_bundle(calibrated_bundle)
    m, v, k = len(bundle.members), len(bundle.tta.views), len(bundle.classes)
    rng = np.random.default_rng(0)
    same = rng.normal(size=(3, 1, k)).repeat(v, axis=1)
    agree = view_samples(bundle, [same] * m)
    assert agree.samples.shape == (m * v, 3, k)
    np.testing.assert_allclose(agree.mutual_information, 0.0, atol=1e-12)  # identical members and views: no spread
    differ = [rng.normal(scale=3.0, size=(3, v, k)) for _ in range(m)]
    res = view_samples(bundle, differ)
    assert (res.mutual_information > 1e-4).all()  # members and views disagree: a spread (its size depends on the temperature)
    np.testing.assert_allclose(res.predictive_entropy, res.expected_entropy + res.mutual_information, atol=1e-9)
    temps = bundle.temperatures_for()
    t = temps["ensemble"]
    bias = np.asarray([temps["bias"][c] for c in bundle.classes]) if temps["bias"] else 0.0
    w = np.asarray([mem.weight for mem in bundle.members]) / sum(mem.weight for mem in bundle.members)
    expected = sum(
        w[i] * np.mean([np.exp(z) / np.exp(z).sum(-1, keepdims=True) for z in (differ[i][:, j] / t + bias for j in range(v))], axis=0)
        for i in range(m)
    )
    np.testing.assert_allclose(res.mean_probs, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="the bundle has"):
        view_samples(bundle, differ[:1])


def test_fitted_from_the_validation_cache_and_served_without_mc_passes(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = fit_review_flag(work, score="max_prob", goal="error_fraction", target=0.5, method=ENSEMBLE, test=False)
    review = json.loads((work / "bundle.json").read_text())["review"]
    assert review["method"] == ENSEMBLE and review["n_samples"] is None and review["threshold"] == res["threshold"]
    bundle = load_bundle(work)
    assert review_method(bundle) == ENSEMBLE
    val = cache_outputs(bundle)
    flagged = val["max_prob"] <= review["threshold"]
    assert review["validation"]["n_flagged"] == int(flagged.sum()) and 0 < flagged.sum() < len(flagged)

    def no_mc(*args: Any, **kw: Any) -> Any:
        raise AssertionError("an MC-dropout pass was run")

    monkeypatch.setattr(mc_predict, "ensemble_mc_predict", no_mc)
    images = [generate_lesion(c, seed=i)[0] for i, c in enumerate(("MEL", "NV", "BCC"))]
    predictor = Predictor(bundle)
    records = predictor.predict(images)
    logits = predictor.engine.view_logits(images)
    expected = view_samples(bundle, logits)
    for i, rec in enumerate(records):
        u = rec["uncertainty"]
        assert "members x TTA views" in u["method"] and u["n_samples"] == len(bundle.members) * len(bundle.tta.views)
        assert u["review"]["score"] == "max_prob" and u["review"]["value"] == pytest.approx(expected.max_prob[i])
        assert u["review"]["flag"] == bool(expected.max_prob[i] <= review["threshold"])
        assert u["epistemic_mutual_information"] == pytest.approx(expected.mutual_information[i])
    assert Predictor(bundle, mc_samples=0).predict(images[:1])[0]["uncertainty"] is None
    with pytest.raises(ValueError, match="members x TTA views of the prediction itself"):
        Predictor(bundle, mc_samples=5)


def test_an_unknown_method_is_refused_before_any_work(work: Path) -> None:
    with pytest.raises(ValueError, match="'method' parameter must be one of"):
        fit_review_flag(work, method="dropout-ish")


def test_compare_scores_ranks_an_oracle_first_with_paired_intervals() -> None:
    from skinlesion.uncertainty.review_compare import compare_scores, errors_caught

    rng = np.random.default_rng(0)
    n = 400
    groups = np.repeat(np.arange(n // 2), 2)  # two images per lesion
    correct = rng.random(n) > 0.3
    oracle = np.where(correct, 0.0, 1.0) + rng.normal(scale=0.01, size=n)  # uncertainty: high on errors
    noise = rng.random(n)
    confidence = np.where(correct, 0.7, 0.5) + rng.normal(scale=0.2, size=n)  # max_prob-like, informative
    res = compare_scores({"max_prob": confidence, "oracle": oracle, "noise": noise}, correct, groups, n_boot=200, rate=0.2)
    s = res["scores"]
    assert res["best"] == "oracle" and res["n_lesions"] == n // 2 and res["n_errors"] == int((~correct).sum())
    assert s["oracle"]["e_aurc"] == pytest.approx(0.0, abs=1e-3)
    assert s["oracle"]["errors_caught_at_0.2"] == pytest.approx(0.2 * n / (~correct).sum())
    assert s["oracle"]["aurc_minus_max_prob_ci"][1] < 0 < s["noise"]["aurc_minus_max_prob_ci"][0]
    lo, hi = s["noise"]["errors_caught_ci"]
    assert lo < 0.2 < hi  # random review catches errors at the review rate
    assert errors_caught(np.array([0.9, 0.1, 0.5]), np.array([True, False, True]), 1 / 3, higher_is_confident=True) == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        compare_scores({"max_prob": np.full(n, np.nan)}, correct, groups)
    with pytest.raises(ValueError, match="'reference' parameter"):
        compare_scores({"noise": noise}, correct, groups)


def test_auto_score_is_the_lowest_validation_aurc(work: Path) -> None:
    res = fit_review_flag(work, score="auto", method=ENSEMBLE, test=False, persist=False)
    sel = res["score_selection"]
    assert res["score"] == sel["chosen"] == min(sel["aurc"], key=sel["aurc"].get)
    assert set(sel["aurc"]) == {"max_prob", "decision_prob", "predictive_entropy", "mutual_information", "expected_entropy"}
    assert sel["aurc"][res["score"]] == pytest.approx(res["validation"]["risk_coverage"][res["score"]]["aurc"])


def _force_diagnosis(path: Path, favoured: str, weight: float) -> None:
    """Give the bundle a diagnosis rule that favours one class by ``weight`` (log-odds)."""
    meta = json.loads((path / "bundle.json").read_text())
    meta["decision"]["policy"] = "diagnosis"
    meta["decision"]["diagnosis"] = {"rule": "balanced", "log_weights": {c: (weight if c == favoured else 0.0) for c in meta["classes"]}}
    (path / "bundle.json").write_text(json.dumps(meta))


def test_the_flag_judges_the_decision_shown_not_the_most_probable_class(work: Path) -> None:
    """Where the diagnosis rule overrides the most probable class, the flag is fitted on the errors of
    the diagnosis and ``decision_prob`` reads the probability of the class decided: low for an
    override, so such a case is sent to review even when the most probable class is a confident one."""
    from skinlesion.uncertainty.mc_predict import review_flag_from_bundle
    from skinlesion.uncertainty.review_fit import with_decisions

    _force_diagnosis(work, "DF", 3.0)
    bundle = load_bundle(work)
    val = with_decisions(bundle, cache_outputs(bundle))
    k = bundle.classes.index("DF")
    override = val["prediction"] != val["argmax"]
    assert override.any() and (val["prediction"][override] == k).all()
    np.testing.assert_array_equal(val["correct"], val["prediction"] == val["y"])
    np.testing.assert_allclose(val["decision_prob"], val["probs"][np.arange(len(val["y"])), val["prediction"]])
    assert (val["decision_prob"][override] < val["probs"][override].max(axis=1)).all()

    before = bundle.bundle_id
    res = fit_review_flag(work, score="decision_prob", goal="error_fraction", target=0.5, method=ENSEMBLE, test=False)
    assert res["errors_of"] == "the bundle's decision (policy 'diagnosis')"
    assert json.loads((work / "bundle.json").read_text())["history"][-1]["previous_bundle_id"] == before
    assert res["validation"]["n_errors"] == int((~val["correct"]).sum())
    bundle = load_bundle(work)
    images = [generate_lesion(c, seed=i)[0] for i, c in enumerate(("MEL", "NV", "BCC", "BKL", "VASC", "AKIEC"))]
    predictor = Predictor(bundle)
    records = predictor.predict(images)
    thr = res["threshold"]
    for rec in records:  # the review reads the probability the record shows for its decision
        value = rec["uncertainty"]["review"]["value"]
        assert rec["uncertainty"]["review"]["score"] == "decision_prob"
        assert value == pytest.approx(rec["prediction"]["probabilities"][rec["prediction"]["decision"]])
        assert rec["uncertainty"]["review"]["flag"] == (value <= thr)
    # the threshold reads the diagnosis rule: changing the rule makes it stale; a max_prob one does not read it
    _force_diagnosis(work, "DF", 1.0)
    with pytest.raises(Exception, match="another decision rule"):
        review_flag_from_bundle(load_bundle(work))
    fit_review_flag(work, score="max_prob", method=ENSEMBLE, test=False)
    _force_diagnosis(work, "DF", 2.0)
    assert review_flag_from_bundle(load_bundle(work)) is not None


def test_decision_prob_needs_the_decisions() -> None:
    from skinlesion.uncertainty.review import ReviewFlagger

    res = view_samples.__globals__["MCResult"].from_samples(
        np.array([[[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]]), np.array([1.0]), stochastic=True, stochastic_layers=("views",))
    flagger = ReviewFlagger("decision_prob")
    np.testing.assert_allclose(flagger.score_of(res, np.array([1, 2])), [0.2, 0.6])  # the samples' mean
    calibrated = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(flagger.score_of(res, np.array([1, 2]), calibrated), [0.3, 0.6])  # the record's
    for bad in (None, np.array([1]), np.array([0, 3]), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="'decisions' parameter must hold the decided class index in \\[0, 3\\)"):
            flagger.score_of(res, bad)
