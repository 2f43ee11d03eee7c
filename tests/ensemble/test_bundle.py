"""Bundles end to end on two tiny members (different backbones and input sizes) trained on one split."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinlesion.calibration.thresholds import Target
from skinlesion.cli.main import app
from skinlesion.ensemble.build import (
    build_bundle,
    calibrate_bundle,
    load_validation_cache,
)
from skinlesion.ensemble.bundle import BundleError, bundle_from_checkpoint, load_bundle
from skinlesion.evaluation import evaluate_bundle, load_bundle_split
from skinlesion.errors import CheckpointError

runner = CliRunner()


@pytest.fixture
def members(tiny_members: list[Path]) -> list[Path]:
    return tiny_members


@pytest.fixture
def bundle_dir(tiny_bundle: Path) -> Path:
    return tiny_bundle


def test_build_writes_a_complete_bundle(bundle_dir: Path, members: list[Path]) -> None:
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    assert [m["backbone"] for m in meta["members"]] == ["test_efficientnet", "test_resnet"]
    assert [m["preprocessing"]["input_size"] for m in meta["members"]] == [[48, 64], [56, 56]]
    assert sum(m["weight"] for m in meta["members"]) == pytest.approx(1.0)
    bacc = np.array(meta["weighting"]["member_bacc"])
    np.testing.assert_allclose([m["weight"] for m in meta["members"]], bacc / bacc.sum())
    assert meta["tta"] == {"views": ["identity", "hflip", "vflip"], "average": "prob"}
    assert meta["temperature"]["mode"] == "ensemble" and meta["temperature"]["ensemble"] > 0
    assert meta["validation"]["calibrated"]["nll"] <= meta["validation"]["uncalibrated"]["nll"] + 1e-9
    split_hash = json.loads((members[0] / "checkpoint.json").read_text())["data"]["split_hash"]
    assert meta["provenance"]["split_hash"] == split_hash
    assert (bundle_dir / "split_manifest.csv").is_file()
    logits, y, _ = load_validation_cache(load_bundle(bundle_dir))
    assert [z.shape[1:] for z in logits] == [(3, 7), (3, 7)] and logits[0].shape[0] == y.shape[0]


def test_loaded_bundle_reproduces_cached_validation_outputs(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    val = load_bundle_split(b, "val")
    fresh = b.view_logits_table(val)
    cached, y, _ = load_validation_cache(b)
    for f, c in zip(fresh, cached, strict=True):
        np.testing.assert_allclose(f, c, atol=1e-4)
    np.testing.assert_array_equal(val.labels(), y)
    # images in memory give what the table pipeline gives
    images = [val.load_image(i) for i in range(4)]
    pred = b.predict_images(images)
    np.testing.assert_allclose(pred.probs, np.exp(b.log_probs([z[:4] for z in fresh])), atol=1e-5)


def test_fitted_weights_lower_validation_nll(members: list[Path], tmp_path: Path) -> None:
    uniform = build_bundle(members, tmp_path / "u", weighting="uniform", tta="none", temperature="none")
    fitted = build_bundle(members, tmp_path / "f", weighting="nll", tta="none", temperature="none")
    assert fitted.meta["weighting"]["val_nll"] <= uniform.meta["weighting"]["val_nll"] + 1e-9
    member = build_bundle(members, tmp_path / "m", weighting="uniform", tta="none", temperature="member")
    assert all(m.temperature != 1.0 for m in member.members)


def test_calibrate_then_evaluate_reports_argmax_and_decisions(bundle_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "bundle"
    shutil.copytree(bundle_dir, work)
    decision = calibrate_bundle(work, [Target("MEL", 0.6, 0.5), Target("AKIEC", 0.5, 0.5)], confidence=None)
    assert set(decision["thresholds"]) == {"MEL", "AKIEC"}
    b = load_bundle(work)
    assert b.thresholds["MEL"] is not None and b.priority[0] == "MEL"
    assert [h["action"] for h in b.meta["history"]] == ["build", "calibrate"]
    res = evaluate_bundle(work, split="test", n_boot=20)
    assert {t["class"] for t in res["targets"]} == {"MEL", "AKIEC"}
    for t in res["targets"]:
        assert t["sensitivity_met"] == (t["sensitivity"] >= t["target_sensitivity"])
    out = Path(res["out_dir"])
    for name in ("metrics.json", "predictions.csv", "decisions.csv", "report.html"):
        assert (out / name).is_file()
    html = (out / "report.html").read_text()
    for title in ("Argmax vs diagnosis vs priority-threshold rule", "Class flags on this split", "Referral on this split",
                  "Priority-threshold rule: clinical targets on this split"):
        assert title in html
    rows = [r.split(",") for r in (out / "decisions.csv").read_text().splitlines()]
    assert rows[0] == ["image", "truth", "argmax", "diagnosis", "priority_threshold_decision", "threshold_fired", "flags", "refer"]
    assert len(rows) == res["provenance"]["n_images"] + 1
    body = rows[1:]
    # every number of the flags, the referral and the diagnosis can be recounted from decisions.csv
    for f in res["flags"]:
        pos = [r for r in body if r[1] == f["class"]]
        neg = [r for r in body if r[1] != f["class"]]
        assert f["sensitivity"] == pytest.approx(np.mean([f["class"] in r[6].split(";") for r in pos]))
        assert f["specificity"] == pytest.approx(np.mean([f["class"] not in r[6].split(";") for r in neg]))
    malignant = {"MEL", "BCC", "AKIEC"}
    ref = res["referral"]
    assert ref["sensitivity"] == pytest.approx(np.mean([r[7] == "true" for r in body if r[1] in malignant]))
    assert ref["referred_fraction"] == pytest.approx(np.mean([r[7] == "true" for r in body]))
    dia = res["diagnosis"]
    assert dia["gain_over_argmax"]["estimate"] == pytest.approx(dia["metrics"]["bacc"] - res["argmax"]["metrics"]["bacc"])
    assert dia["metrics"]["accuracy"] == pytest.approx(np.mean([r[1] == r[3] for r in body]))
    assert res["policy"] == "diagnosis" and "ood" not in res  # no gate fitted (ood=False)
    assert res["calibration"]["ece_before"] >= 0 and not res["provenance"]["in_sample"]


def test_cli_build_calibrate_evaluate(members: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cli-bundle"
    r = runner.invoke(app, ["ensemble", "build", *map(str, members), "--out", str(out), "--tta", "none", "--weights", "uniform"])
    assert r.exit_code == 0, r.output
    assert "weight 0.500" in r.output
    r = runner.invoke(app, ["calibrate", str(out), "--targets", "MEL:sens=0.5,spec=0.5 AKIEC:sens=0.5", "--confidence", "0.9"])
    assert r.exit_code == 0, r.output
    assert "MEL" in r.output and "priority-threshold rule: MEL" in r.output
    r = runner.invoke(app, ["evaluate", str(out), "--split", "val", "--n-boot", "10"])
    assert r.exit_code == 0, r.output
    assert "IN-SAMPLE" in r.output and "priority-threshold rule" in r.output and "diagnosis - argmax BACC" in r.output
    r = runner.invoke(app, ["calibrate", str(out), "--targets", "XYZ:sens=0.5"])
    assert r.exit_code == 1 and "not among the model's classes" in r.output


def test_members_from_different_splits_are_refused(members: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(members[1], other)
    meta = json.loads((other / "checkpoint.json").read_text())
    meta["data"]["split_hash"] = "0" * 64
    (other / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="members must share one split"):
        build_bundle([members[0], other], tmp_path / "x")
    with pytest.raises(ValueError, match="same checkpoint is given twice"):
        build_bundle([members[0], members[0]], tmp_path / "y")
    with pytest.raises(ValueError, match="'weighting' parameter must be one of"):
        build_bundle(members, tmp_path / "z", weighting="best")


def _link_member_outside(bundle_dir: Path):  # noqa: ANN202
    """An edit that replaces member 0's folder by a link to the original bundle's copy (outside)."""

    def edit(m: dict, d: Path) -> None:
        shutil.rmtree(d / m["members"][0]["dir"])
        (d / m["members"][0]["dir"]).symlink_to(bundle_dir / m["members"][0]["dir"], target_is_directory=True)

    return edit


def test_load_bundle_names_what_is_wrong(bundle_dir: Path, tmp_path: Path) -> None:
    def broken(edit) -> Path:  # noqa: ANN001
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundle_dir, d)
        meta = json.loads((d / "bundle.json").read_text())
        edit(meta, d)
        (d / "bundle.json").write_text(json.dumps(meta))
        return d

    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_bundle(tmp_path)
    cases = [
        (lambda m, d: m.pop("tta"), r"missing field\(s\) \['tta'\]"),
        (lambda m, d: m["members"][0].__setitem__("weight", 0.9), "weights must sum to 1"),
        (lambda m, d: m["decision"].__setitem__("thresholds", {"XX": {"threshold": 0.5}}), r"unknown class\(es\) \['XX'\]"),
        (lambda m, d: m["tta"].__setitem__("views", ["spin"]), "Unknown TTA view 'spin'"),
        (lambda m, d: m["temperature"].__setitem__("mode", "auto"), "temperature.mode must be one of"),
        (lambda m, d: shutil.rmtree(d / m["members"][1]["dir"]), r"members\[1\] \(m1-test_resnet\): folder .* is missing"),
        (lambda m, d: m["members"][0].__setitem__("weights_sha256", "f" * 64), "weights_sha256 differs"),
        (lambda m, d: m["members"][0].pop("temperature"), r"members\[0\] lacks \['temperature'\]"),
        (lambda m, d: m["members"][0].__setitem__("weights_sha256", None), r"members\[0\] \(.*\): weights_sha256 is None; .* pinned"),
        (lambda m, d: m["members"][1].__setitem__("dir", str(bundle_dir / m["members"][1]["dir"])),
         r"members\[1\] \(.*\): dir .* leads outside the bundle folder"),
        (lambda m, d: m["members"][0].__setitem__("dir", os.path.relpath(bundle_dir / m["members"][0]["dir"], d)),
         r"members\[0\] \(.*\): dir '\.\./.*' leads outside the bundle folder"),
        (_link_member_outside(bundle_dir), r"members\[0\] \(.*\): dir .* leads outside the bundle folder .*no links out of it"),
    ]
    for edit, message in cases:
        with pytest.raises(BundleError, match=message):
            load_bundle(broken(edit))


def test_a_test_time_input_size_feeds_every_member_at_that_size(members: list[Path], tmp_path: Path) -> None:
    b = build_bundle(members, tmp_path / "big", weighting="uniform", tta="none", temperature="none", input_size=(72, 96))
    meta = json.loads((tmp_path / "big" / "bundle.json").read_text())
    assert [m["preprocessing"]["input_size"] for m in meta["members"]] == [[72, 96], [72, 96]]
    assert [m["preprocessing"]["trained_input_size"] for m in meta["members"]] == [[48, 64], [56, 56]]
    assert [m.input_size for m in b.members] == [(72, 96), (72, 96)]  # load_bundle reads bundle.json's size
    seen: list[tuple[int, ...]] = []
    hook = b.members[0].model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    fresh = b.view_logits_table(load_bundle_split(b, "val"))
    hook.remove()
    assert seen and set(seen) == {(72, 96)}
    cached, _, _ = load_validation_cache(b)  # the fitted validation outputs were predicted at that size
    for f, c in zip(fresh, cached, strict=True):
        np.testing.assert_allclose(f, c, atol=1e-4)
    plain = build_bundle(members, tmp_path / "plain", weighting="uniform", tta="none", temperature="none")
    assert not np.allclose(load_validation_cache(plain)[0][0], cached[0], atol=1e-3)
    # the CLI takes it as HxW and refuses anything else
    res = runner.invoke(app, ["ensemble", "build", *map(str, members), "--out", str(tmp_path / "cli"), "--tta", "none",
                              "--input-size", "72x96"])
    assert res.exit_code == 0, res.output
    assert load_bundle(tmp_path / "cli").members[1].input_size == (72, 96)
    res = runner.invoke(app, ["ensemble", "build", *map(str, members), "--out", str(tmp_path / "bad"), "--input-size", "72"])
    assert res.exit_code != 0 and "--input-size must be HxW" in res.output
    # bundle.json may change the size only: other preprocessing that differs from the checkpoint is refused
    d = tmp_path / "edited"
    shutil.copytree(tmp_path / "big", d)
    meta["members"][0]["preprocessing"]["mean"] = [0.0, 0.0, 0.0]
    (d / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"members\[0\] .*preprocessing.mean is \[0.0, 0.0, 0.0\] in bundle.json but"):
        load_bundle(d)
    meta["members"][0]["preprocessing"] = {**meta["members"][1]["preprocessing"], "input_size": [72]}
    (d / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"preprocessing.input_size must be \[H, W\]"):
        load_bundle(d)


def test_a_checkpoint_is_a_one_member_bundle(members: list[Path]) -> None:
    b = bundle_from_checkpoint(members[0])
    assert len(b.members) == 1 and b.thresholds == {} and b.tta.views == ("identity",)
    images = [np.full((30, 40, 3), 120, np.uint8), np.zeros((150, 200, 3), np.uint8)]
    pred = b.predict_images(images)
    assert pred.probs.shape == (2, 7)
    np.testing.assert_array_equal(pred.decision, pred.probs.argmax(1))


def test_member_preprocess_rejects_non_rgb_uint8(members: list[Path]) -> None:
    b = bundle_from_checkpoint(members[0])
    with pytest.raises(ValueError, match=r"images\[1\] must be an RGB uint8 array \(H, W, 3\)"):
        b.predict_images([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="float32"):
        b.predict_images([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="holds no image"):
        b.predict_images([])


def test_calibrate_needs_a_matching_validation_cache(bundle_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "b"
    shutil.copytree(bundle_dir, work)
    meta = json.loads((work / "bundle.json").read_text())
    meta["tta"]["views"] = ["identity"]
    (work / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"validation.npz does not match .*bundle.json: it was computed for views \['identity', 'hflip', 'vflip'\] \(the bundle has \['identity'\]\)\. Rebuild the bundle"):
        calibrate_bundle(work, [Target("MEL", 0.5)])
    (work / "validation.npz").unlink()
    with pytest.raises(BundleError, match="validation.npz is missing: rebuild the bundle"):
        calibrate_bundle(work, [Target("MEL", 0.5)])


def test_the_validation_cache_records_and_checks_the_members_weights(bundle_dir: Path, tmp_path: Path) -> None:
    """The validation cache records the members' weights hashes: a cache computed for other weights
    of a member (e.g. one copied from another build of the same names) is refused, naming the member."""
    from skinlesion.ensemble.build import load_validation_cache

    work = tmp_path / "b"
    shutil.copytree(bundle_dir, work)
    with np.load(work / "validation.npz") as z:
        recorded = [str(h) for h in z["weights_sha256"]]
        arrays = {k: z[k] for k in z.files}
    b = load_bundle(work)
    assert recorded == [m.meta["weights_sha256"] for m in b.members]
    load_validation_cache(b)  # matches
    np.savez_compressed(work / "validation.npz", **{**arrays, "weights_sha256": np.asarray([recorded[0], "0" * 64])})
    name = b.members[1].name
    with pytest.raises(BundleError, match=rf"it was computed for other weights of members \['{name}'\]\. Rebuild the bundle"):
        load_validation_cache(b)
    # a cache written before the hashes were recorded is read as it is
    np.savez_compressed(work / "validation.npz", **{k: v for k, v in arrays.items() if k != "weights_sha256"})
    assert len(load_validation_cache(b)[0]) == 2


def test_the_ensemble_temperature_carries_class_biases(bundle_dir: Path, tmp_path: Path) -> None:
    from scipy.special import log_softmax

    from skinlesion.ensemble.bundle import BundleError, validate_meta
    from skinlesion.ensemble.build import load_validation_cache

    b = load_bundle(bundle_dir)
    t = b.meta["temperature"]
    assert t["mode"] == "ensemble" and set(t["bias"]) == set(b.classes) and t["bias"][b.classes[0]] == 0.0
    logits, y, _ = load_validation_cache(b)
    bias = np.array([t["bias"][c] for c in b.classes])
    expected = log_softmax(b.log_probs(logits, calibrated=False) / t["ensemble"] + bias, axis=1)
    np.testing.assert_allclose(b.log_probs(logits), expected, atol=1e-10)
    # calibrate can drop the biases again (a plain temperature, refitted on the same rows)
    work = tmp_path / "b"
    shutil.copytree(bundle_dir, work)
    calibrate_bundle(work, [Target("MEL", 0.6, 0.5)], confidence=None, class_bias=False)
    plain = load_bundle(work)
    assert "bias" not in plain.meta["temperature"] and plain.temperatures_for()["bias"] is None
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["temperature"]["bias"] = {"MEL": 0.0}
    with pytest.raises(BundleError, match=r"temperature\.bias must give one bias for exactly the classes"):
        validate_meta(meta)
