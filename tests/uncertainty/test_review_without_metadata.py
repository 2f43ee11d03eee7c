"""MC-dropout scores and the review flag follow the operating point: an image given without metadata
is scored with the without-metadata temperatures and flagged by a threshold fitted on validation with
the metadata hidden (``review.without_metadata``), not by the one fitted with metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from skinlesion.cli.explain_eval import review_command
from skinlesion.data.synthetic import generate_lesion
from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, BundleError, load_bundle, write_meta
from skinlesion.records import uncertainty_records
from skinlesion.uncertainty.mc_predict import bundle_mc_predict, review_flag_from_bundle
from skinlesion.uncertainty.review_fit import fit_review_flag, uncertainty_over_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_SAMPLES = 3
OLD = {"age": 80, "sex": "male", "site": "back"}


@pytest.fixture(scope="module")
def reviewed(calibrated_fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("review-nm") / "bundle"
    shutil.copytree(calibrated_fusion_bundle, path)
    fit_review_flag(path, n_samples=N_SAMPLES, score="mutual_information", goal="coverage", target=0.7, batch_size=64)
    return path


@pytest.fixture
def work(reviewed: Path, tmp_path: Path) -> Path:
    path = tmp_path / "bundle"
    shutil.copytree(reviewed, path)
    return path


def _images(n: int = 3) -> list[np.ndarray]:
    return [generate_lesion("NV", seed=i, size=(48, 64), hair=False, vignette=False)[0] for i in range(n)]


def test_review_fits_a_threshold_with_the_metadata_hidden(reviewed: Path) -> None:
    meta = json.loads((reviewed / "bundle.json").read_text())
    point = meta["review"]["without_metadata"]
    assert point["fitted_on"] == "val, metadata hidden"
    assert point["fitted_for"]["without_metadata_temperature"] == meta["decision"]["without_metadata"]["temperature"]
    assert {"validation", "test"} <= set(point) and point["test"]["n_lesions"] > 0
    # the stored threshold reproduces its validation flag rate on a hidden-metadata MC pass
    val = uncertainty_over_split(reviewed, "val", n_samples=N_SAMPLES, batch_size=64, hide_metadata=True)
    assert val["metadata_hidden"] is True
    flagger = review_flag_from_bundle(reviewed, WITHOUT_METADATA)
    assert flagger.threshold_ == pytest.approx(point["threshold"])
    assert flagger.flag(val["mutual_information"]).mean() == pytest.approx(point["validation"]["flagged_fraction"])
    with_md = uncertainty_over_split(reviewed, "val", n_samples=N_SAMPLES, batch_size=64)
    assert not np.allclose(with_md["mutual_information"], val["mutual_information"])


def test_cli_fits_both_thresholds_and_can_skip_the_test_passes(work: Path) -> None:
    app = typer.Typer()
    app.command()(review_command)
    r = CliRunner().invoke(app, [str(work), "--n-samples", str(N_SAMPLES), "--goal", "coverage", "--target", "0.7", "--no-test"])
    assert r.exit_code == 0, r.output
    review = json.loads((work / "bundle.json").read_text())["review"]
    assert "test" not in review and "test" not in review["without_metadata"]
    assert review["without_metadata"]["validation"]["flagged_fraction"] > 0
    assert "without metadata: score mutual_information" in r.output and "(fitted on val, metadata hidden)" in r.output
    assert "risk-coverage" not in r.output  # a test-split report


def test_images_without_metadata_get_that_points_temperature(work: Path) -> None:
    meta = json.loads((work / "bundle.json").read_text())
    meta["decision"]["without_metadata"]["temperature"]["ensemble"] = 1000.0  # ~uniform probabilities
    meta["decision"]["without_metadata"]["temperature"].pop("bias", None)
    write_meta(work, meta)
    bundle = load_bundle(work)
    images = _images()
    records = [None, OLD, None]
    mixed = bundle_mc_predict(bundle, images, n_samples=N_SAMPLES, seed=3, metadata=records)
    k = len(bundle.classes)
    for i in (0, 2):
        np.testing.assert_allclose(mixed.mean_probs[i], 1 / k, atol=1e-3)
    assert mixed.mean_probs[1].max() > 1 / k + 0.01
    alone = bundle_mc_predict(bundle, [images[1]], n_samples=N_SAMPLES, seed=3, metadata=[OLD])
    np.testing.assert_allclose(mixed.samples[:, 1], alone.samples[:, 0], atol=1e-6)


def test_records_are_flagged_by_their_points_threshold(work: Path) -> None:
    meta = json.loads((work / "bundle.json").read_text())
    meta["review"]["threshold"] = 1e9  # with metadata: never flags
    meta["review"]["without_metadata"]["threshold"] = 0.0  # without: always flags (MI >= 0)
    write_meta(work, meta)
    recs = uncertainty_records(load_bundle(work), _images(2), N_SAMPLES, metadata=[None, OLD])
    assert recs[0]["review"]["flag"] is True and recs[0]["review"]["threshold"] == 0.0
    assert recs[0]["review"]["operating_point"] == WITHOUT_METADATA
    assert recs[0]["review"]["fitted_on"] == "val, metadata hidden"
    assert recs[1]["review"]["flag"] is False and recs[1]["review"]["threshold"] == 1e9
    assert recs[1]["review"]["operating_point"] == WITH_METADATA


def test_a_review_older_than_the_operating_point_is_refused(work: Path) -> None:
    meta = json.loads((work / "bundle.json").read_text())
    del meta["review"]["without_metadata"]
    write_meta(work, meta)
    assert review_flag_from_bundle(work) is not None  # the main threshold still holds
    with pytest.raises(BundleError, match=r"review\.without_metadata.*refit"):
        review_flag_from_bundle(work, WITHOUT_METADATA)


def test_recalibrating_without_metadata_makes_its_threshold_stale(work: Path) -> None:
    meta = json.loads((work / "bundle.json").read_text())
    meta["decision"]["without_metadata"]["temperature"]["ensemble"] *= 1.5
    write_meta(work, meta)
    review_flag_from_bundle(work)
    with pytest.raises(BundleError, match="other members, weights or temperatures"):
        review_flag_from_bundle(work, WITHOUT_METADATA)
