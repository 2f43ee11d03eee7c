"""MC dropout over a bundle's split and the review flag fitted on validation (skinlesion.uncertainty.review_fit)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from skinlesion.cli.explain_eval import review_command
from skinlesion.ensemble.bundle import BundleError, load_bundle
from skinlesion.uncertainty.mc_predict import review_flag_from_bundle
from skinlesion.uncertainty.review_fit import (
    SCORES,
    fit_review_flag,
    uncertainty_over_split,
)
from skinlesion.uncertainty.review import ReviewFlagger

N_SAMPLES = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def bundle_dir(tiny_bundle: Path) -> Path:
    """The session's tiny bundle (two members, synthetic lesions with true masks); copy before changing it."""
    return tiny_bundle


@pytest.fixture
def work(bundle_dir: Path, tmp_path: Path) -> Path:
    """A copy of the bundle that a test may modify."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    return dst


def test_uncertainty_over_split_batches_and_decomposes(bundle_dir: Path) -> None:
    out = uncertainty_over_split(bundle_dir, "val", n_samples=N_SAMPLES, batch_size=5, max_images=12, seed=0)
    n, k = out["mean_probs"].shape
    assert n == 12 and k == 7 and out["stochastic"] is True
    for key in ("predictive_entropy", "expected_entropy", "mutual_information", "max_prob", "y", "groups", "image_ids"):
        assert out[key].shape == (12,)
    np.testing.assert_allclose(out["predictive_entropy"], out["expected_entropy"] + out["mutual_information"], atol=1e-9)
    assert (out["mutual_information"] > 0).any()
    np.testing.assert_array_equal(out["correct"], out["mean_probs"].argmax(1) == out["y"])
    again = uncertainty_over_split(load_bundle(bundle_dir), "val", n_samples=N_SAMPLES, batch_size=5, max_images=12, seed=0)
    np.testing.assert_array_equal(again["image_ids"], out["image_ids"])
    np.testing.assert_allclose(again["mutual_information"], out["mutual_information"])


def test_fit_review_flag_persists_and_reconstructs(work: Path) -> None:
    before = json.loads((work / "bundle.json").read_text())
    res = fit_review_flag(work, n_samples=N_SAMPLES, score="mutual_information", goal="error_fraction", target=0.5)
    meta = json.loads((work / "bundle.json").read_text())
    review = meta["review"]
    assert {k: review[k] for k in ("score", "goal", "target", "n_samples", "fitted_on")} == {
        "score": "mutual_information", "goal": "error_fraction", "target": 0.5, "n_samples": N_SAMPLES, "fitted_on": "val"
    }
    assert review["threshold"] == pytest.approx(res["threshold"]) and review["include_backbone"] is True
    assert meta["history"][-1]["action"] == "review" and meta["members"] == before["members"]
    assert set(review["test"]["risk_coverage"]) == set(SCORES)
    for r in review["test"]["risk_coverage"].values():
        assert r["aurc"] >= r["optimal_aurc"] - 1e-12 and r["e_aurc"] == pytest.approx(r["aurc"] - r["optimal_aurc"])
        assert set(r["risk_at_coverage"]) == {"0.5", "0.8", "0.9", "1"}
    full_coverage_risk = review["test"]["risk_coverage"]["max_prob"]["risk_at_coverage"]["1"]
    assert full_coverage_risk == pytest.approx(1 - review["test"]["accuracy"])

    # the flagger rebuilt from bundle.json flags the validation cases exactly as the fitted one
    flagger = review_flag_from_bundle(work)
    val = uncertainty_over_split(work, "val", n_samples=N_SAMPLES, seed=0)
    fitted = ReviewFlagger("mutual_information", "error_fraction", 0.5).fit(val["mutual_information"], val["correct"])
    assert flagger is not None and flagger.threshold_ == pytest.approx(fitted.threshold_)
    np.testing.assert_array_equal(flagger.flag(val["mutual_information"]), fitted.flag(val["mutual_information"]))
    assert flagger.flag(val["mutual_information"]).mean() == pytest.approx(review["validation"]["flagged_fraction"])
    assert 0 < review["validation"]["flagged_fraction"] < 1


def test_confidence_score_flags_low_values_and_dry_run_keeps_the_bundle(work: Path) -> None:
    before = (work / "bundle.json").read_text()
    res = fit_review_flag(work, n_samples=N_SAMPLES, score="max_prob", goal="coverage", target=0.25, persist=False)
    assert (work / "bundle.json").read_text() == before and review_flag_from_bundle(work) is None
    assert res["flag_when"] == "score <= threshold" and res["validation"]["flagged_fraction"] <= 0.25 + 1e-9
    assert not res["persisted"]


def test_a_stale_review_is_refused(work: Path) -> None:
    fit_review_flag(work, n_samples=N_SAMPLES, target=0.5)
    meta = json.loads((work / "bundle.json").read_text())
    meta["temperature"]["ensemble"] = meta["temperature"]["ensemble"] * 2
    (work / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="fitted for other members, weights or temperatures"):
        review_flag_from_bundle(work)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"score": "entropy"}, "The 'score' parameter must be one of"),
        ({"goal": "recall"}, "The 'goal' parameter must be one of"),
        ({"target": 0.0}, r"The 'target' parameter must be a number in \(0, 1\]"),
    ],
)
def test_bad_review_parameters_are_named(work: Path, kwargs: dict, message: str) -> None:
    before = (work / "bundle.json").read_text()
    with pytest.raises(ValueError, match=message):
        fit_review_flag(work, n_samples=N_SAMPLES, **kwargs)
    assert (work / "bundle.json").read_text() == before


def test_bad_split_is_named(bundle_dir: Path) -> None:
    with pytest.raises(ValueError, match="The 'split' parameter must be one of"):
        uncertainty_over_split(bundle_dir, "validation", n_samples=N_SAMPLES)


def test_cli_review(work: Path) -> None:
    app = typer.Typer()
    app.command()(review_command)
    r = CliRunner().invoke(app, [str(work), "--n-samples", str(N_SAMPLES), "--score", "predictive_entropy"])
    assert r.exit_code == 0, r.output
    assert "fitted on val" in r.output and "AURC" in r.output and "review flag saved" in r.output
    assert json.loads((work / "bundle.json").read_text())["review"]["score"] == "predictive_entropy"
    r = CliRunner().invoke(app, [str(work), "--score", "bogus"])
    assert r.exit_code == 1 and "The 'score' parameter must be one of" in r.output


def test_review_on_a_checkpoint_reports_without_saving(tiny_members: list[Path]) -> None:
    res = fit_review_flag(tiny_members[0], n_samples=2, score="max_prob", batch_size=16)
    assert res["persisted"] is False and res["bundle"] == str(tiny_members[0])
    assert 0.0 <= res["test"]["flagged_fraction"] <= 1.0
    assert not (tiny_members[0] / "bundle.json").exists()


def test_split_uncertainty_feeds_the_tables_metadata_to_fusion_members(fusion_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import skinlesion.uncertainty.review_fit as ue

    seen: list = []
    real = ue.bundle_mc_predict

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen.extend(k.get("metadata") or [])
        return real(*a, **k)

    monkeypatch.setattr(ue, "bundle_mc_predict", spy)
    out = uncertainty_over_split(fusion_bundle, "val", n_samples=2, batch_size=4, max_images=8, seed=0)
    assert len(seen) == len(out["y"]) == 8
    assert any(r.get("sex") in ("male", "female") for r in seen) and all(set(r) <= {"age", "sex", "site"} for r in seen)
