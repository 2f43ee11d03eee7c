"""`skinlesion explain IMAGE` end to end on a tiny bundle and a synthetic lesion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.data.synthetic import generate_lesion
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.explain.pipeline import explain_image

runner = CliRunner()


@pytest.fixture(scope="module")
def lesion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, object]:
    image, mask, truth = generate_lesion("MEL", seed=3, hair=False, vignette=False)
    path = tmp_path_factory.mktemp("img") / "lesion.png"
    Image.fromarray(image).save(path)
    return path, mask, truth


def test_explain_image_returns_every_part(tiny_bundle: Path, lesion: tuple) -> None:
    path, mask, truth = lesion
    bundle = load_bundle(tiny_bundle)
    image = np.asarray(Image.open(path).convert("RGB"))
    result, arrays = explain_image(bundle, image, mc_samples=4, pixel_spacing_mm=truth.pixel_spacing_mm, class_name="MEL")
    assert set(result["prediction"]["probabilities"]) == set(bundle.classes)
    assert result["attention"]["class"] == "MEL" and result["attention"]["method"] == "gradcam++"
    assert arrays["cam"].shape == image.shape[:2] and 0 <= arrays["cam"].min() and arrays["cam"].max() <= 1
    iou = (arrays["mask"] & mask).sum() / (arrays["mask"] | mask).sum()
    assert iou > 0.7
    a = result["abcde"]
    assert a["diameter_unit"] == "mm" and a["diameter_mm"] == pytest.approx(truth.diameter_mm, rel=0.1)
    assert result["dermoscopy_score"]["band"] in ("benign", "suspicious", "likely melanoma")
    u = result["uncertainty"]
    assert u["n_samples"] == 4 and u["epistemic_mutual_information"] >= 0
    assert u["predictive_entropy"] == pytest.approx(u["aleatoric_expected_entropy"] + u["epistemic_mutual_information"], abs=1e-6)
    assert u["review"]["flag"] is None and "no review threshold" in u["review"]["note"]
    assert result["concepts"]["available"] is False
    assert "not a diagnosis" in result["notice"]


def test_explain_without_spacing_reports_pixels(tiny_bundle: Path, lesion: tuple) -> None:
    path, _, _ = lesion
    result, _ = explain_image(load_bundle(tiny_bundle), np.asarray(Image.open(path).convert("RGB")), mc_samples=0)
    assert result["abcde"]["diameter_unit"] == "px" and result["abcde"]["diameter_mm"] is None
    assert result["uncertainty"] is None


def test_explain_decision_follows_bundle_thresholds(tiny_bundle: Path, lesion: tuple, tmp_path: Path) -> None:
    work = tmp_path / "b"
    shutil.copytree(tiny_bundle, work)
    meta = json.loads((work / "bundle.json").read_text())
    meta["decision"] = {
        "rule": "priority-threshold", "priority": None, "thresholds": {"VASC": {"threshold": 0.0}}, "policy": "priority-threshold",
    }
    (work / "bundle.json").write_text(json.dumps(meta))
    path, _, _ = lesion
    result, _ = explain_image(load_bundle(work), np.asarray(Image.open(path).convert("RGB")), mc_samples=0)
    assert result["prediction"]["decision"] == "VASC"  # a threshold of 0 always fires
    assert result["prediction"]["decided_by"].startswith("threshold of VASC")
    assert result["attention"]["class"] == "VASC"  # the decision is what gets explained by default


def test_cli_explain_writes_json_and_pngs(
    tiny_members: list[Path], lesion: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skinlesion.ensemble.bundle as bundle_module

    path, _, _ = lesion
    out = tmp_path / "out"
    r = runner.invoke(app, ["explain", str(path), "--checkpoint", str(tiny_members[0]), "--out", str(out), "--mc-samples", "3"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "lesion.json").read_text())
    assert data["input"]["sha256"] and data["files"]["cam_overlay"] == "lesion_cam.png"
    assert Image.open(out / "lesion_cam.png").size == (200, 150)
    assert Image.open(out / "lesion_mask.png").size == (200, 150)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = runner.invoke(app, ["explain", str(bad), "--checkpoint", str(tiny_members[0]), "--out", str(out)])
    assert r.exit_code == 1 and "not an image file" in r.output
    monkeypatch.setattr(bundle_module, "default_bundle_dir", lambda: tmp_path / "no-default")  # neither given: the default
    r = runner.invoke(app, ["explain", str(path), "--out", str(out)])
    assert r.exit_code == 1 and "this installation has no default bundle" in r.output
    r = runner.invoke(app, ["explain", str(path), "--checkpoint", str(tiny_members[0]), "--class", "XYZ"])
    assert r.exit_code == 1 and "'class' parameter must be one of" in r.output


def test_explain_reports_concept_sensitivities_from_the_bank(tiny_bundle: Path, lesion: tuple, tmp_path: Path) -> None:
    from skinlesion.explain.concept_bank import learn_concept_bank

    work = tmp_path / "b"
    shutil.copytree(tiny_bundle, work)
    bundle = load_bundle(work)
    learn_concept_bank(bundle, n_per_class=3, n_runs=2, min_concept_examples=2).save()
    path, _, _ = lesion
    result, _ = explain_image(load_bundle(work), np.asarray(Image.open(path).convert("RGB")), mc_samples=0, class_name="MEL")
    concepts = result["concepts"]
    assert concepts["available"] is True and concepts["class"] == "MEL" and concepts["concepts"]
    for row in concepts["concepts"].values():
        assert row["class_name"] == "MEL" and np.isfinite(row["sensitivity"])
        assert row["direction"] in ("up", "down", "none") and row["summary"]
    json.dumps(result)  # the whole result is JSON-serialisable


def test_explain_flags_for_review_with_the_bundle_threshold(tiny_bundle: Path, lesion: tuple, tmp_path: Path) -> None:
    from skinlesion.uncertainty.review_fit import fit_review_flag

    work = tmp_path / "b"
    shutil.copytree(tiny_bundle, work)
    fit_review_flag(work, n_samples=3, score="max_prob", goal="coverage", target=1.0)  # every validation case
    path, _, _ = lesion
    image = np.asarray(Image.open(path).convert("RGB"))
    result, _ = explain_image(load_bundle(work), image)
    assert result["uncertainty"]["n_samples"] == 3  # as many passes as the flag was fitted with
    review = result["uncertainty"]["review"]
    assert review["score"] == "max_prob" and review["goal"].startswith("coverage 1.0") and "validation" in review["goal"]
    # The threshold flags every validation case, not every possible image: a new image more confident than
    # all of them is not flagged. The flag must follow the stored threshold either way.
    assert review["flag"] is (review["value"] <= review["threshold"])
    meta_path = work / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["review"]["threshold"] = 1.0  # max_prob <= 1 always: flags everything
    meta_path.write_text(json.dumps(meta))
    flagged, _ = explain_image(load_bundle(work), image)
    assert flagged["uncertainty"]["review"]["flag"] is True
