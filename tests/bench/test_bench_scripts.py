"""Smoke tests of bench/quality.py and bench/speed.py on the tiny session bundle (seconds, not results)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | None, str]:
    rc = importlib.import_module(f"bench.{name}").main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


def test_quality_rows_targets_and_cache(calibrated_bundle: Path, tiny_members: list[Path], tmp_path: Path, capsys) -> None:
    argv = ["--bundle", str(calibrated_bundle), "--baseline", str(tiny_members[0]), "--n-boot", "5",
            "--cache-dir", str(tmp_path / "cache")]
    rc, first, _ = _run("quality", argv, capsys)
    assert rc == 0
    rows = first["rows"]
    names = [m["name"] for m in first["bundle"]["members"]]
    assert first["bundle"]["policy"] == "diagnosis"
    assert list(rows) == [
        "baseline", *(f"member:{n}" for n in names), "ensemble", "ensemble_tta", "ensemble_tta_calibrated", "shipped",
        "priority_threshold",
    ]
    assert rows["baseline"]["same_weights_as_member"] is not None  # member a is the baseline's checkpoint
    assert rows["baseline"]["bacc"] == rows[f"member:{rows['baseline']['same_weights_as_member']}"]["bacc"]
    shipped = rows["shipped"]
    assert {"ece_before", "ece_after"} <= shipped["calibration"].keys()
    assert shipped["targets"]["MEL"]["sensitivity"]["target"] == 0.6
    assert set(first["side_by_side"]["bacc"]) == set(rows)
    assert "shipped_no_metadata" not in rows  # image-only members
    assert not first["subsampled"]

    rc, again, _ = _run("quality", [*argv, "--reuse"], capsys)
    assert rc == 0
    assert all(e["images_run"] == 0 for e in again["logits"])
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds_metrics"}  # noqa: E731
    assert {k: strip(v) for k, v in again["rows"].items()} == {k: strip(v) for k, v in rows.items()}


def test_quality_reads_the_evaluation_and_reports_what_predict_decides(calibrated_bundle: Path, tmp_path: Path, capsys) -> None:
    """--eval-dir reads `evaluate`'s saved view logits (same rows as running the members), and the
    shipped row is the bundle's policy: the evaluation's diagnosis BACC, not the thresholds' rule."""
    from skinlesion.evaluation import evaluate_bundle

    ev = tmp_path / "eval"
    res_eval = evaluate_bundle(calibrated_bundle, split="test", out_dir=ev, n_boot=0)
    base = ["--bundle", str(calibrated_bundle), "--baseline", "none", "--n-boot", "5", "--cache-dir", str(tmp_path / "cache")]
    rc, ran, _ = _run("quality", base, capsys)
    assert rc == 0
    rc, read, _ = _run("quality", [*base, "--eval-dir", str(ev)], capsys)
    assert rc == 0
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds_metrics"}  # noqa: E731
    assert {k: strip(v) for k, v in read["rows"].items()} == {k: strip(v) for k, v in ran["rows"].items()}
    assert read["rows"]["shipped"]["bacc"]["value"] == pytest.approx(res_eval["diagnosis"]["metrics"]["bacc"], abs=1e-4)
    assert read["rows"]["priority_threshold"]["bacc"]["value"] == pytest.approx(res_eval["decision"]["metrics"]["bacc"], abs=1e-4)
    rc, _, err = _run("quality", [*base, "--eval-dir", str(tmp_path / "nowhere")], capsys)
    assert rc != 0 and "evaluate" in err


def test_quality_refuses_a_baseline_on_another_split(calibrated_bundle: Path, tiny_members: list[Path], tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "other" / "checkpoint"
    shutil.copytree(tiny_members[0], ckpt)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["data"]["split_hash"] = "0" * 64
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    rc, _, err = _run("quality", ["--bundle", str(calibrated_bundle), "--baseline", str(ckpt), "--cache-dir", str(tmp_path)], capsys)
    assert rc == 2
    assert "was trained on split 0000" in err and "cannot be compared" in err


def test_speed_training_predict_and_explain(calibrated_bundle: Path, capsys) -> None:
    argv = ["--bundle", str(calibrated_bundle), "--synthetic", "--image-size", "96x128", "--repeats", "1", "--warmup", "0",
            "--batches", "1", "2", "--train-steps", "1", "--train-warmup", "0"]
    rc, res, _ = _run("speed", argv, capsys)
    assert rc == 0
    assert [t["source"] for t in res["training"]] == ["measured", "measured"]
    assert all(t["train_images_per_s"] > 0 and t["from_wall_time"]["images_per_s"] > 0 for t in res["training"])
    assert [p["batch"] for p in res["predict"]] == [1, 2]
    for p in res["predict"]:
        assert p["probabilities+decision"]["per_image_ms"]["median"] > 0 and p["full_record"]["images_per_s"] > 0
    assert res["bundle"]["mc_samples"] == 3 and res["bundle"]["full_record_has_review_flag"]
    assert res["explain"]["given_record"]["per_image_ms"]["median"] > 0
    assert res["threads"]["torch_intra_op"] == 1
    assert res["image_shape"] == [96, 128, 3]


def test_calibration_transfer_refits_on_validation_and_measures_on_test(calibrated_bundle: Path, tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    from skinlesion.evaluation import evaluate_bundle

    ev = tmp_path / "eval"
    res_eval = evaluate_bundle(calibrated_bundle, split="test", out_dir=ev, n_boot=0)
    rc, res, _ = _run("calibration_transfer", ["--bundle", str(calibrated_bundle), "--eval-dir", str(ev), "--n-boot", "20"], capsys)
    assert rc == 0
    today = res["calibration"]["temperature"]
    assert today["test_argmax_bacc"] == pytest.approx(res_eval["argmax"]["metrics"]["bacc"])  # the evaluation's own probabilities
    assert today["test_ece"] == pytest.approx(res_eval["calibration"]["ece_after"], abs=1e-6)
    assert res["calibration"]["temperature+bias"]["val_ece"] >= 0 and set(res["fitted"]["bias"]) == set(res_eval["argmax"]["metrics"]["per_class"])
    assert res["flags_test"]["MEL"]["today"]["threshold"] == res_eval["flags"][0]["threshold"]
    assert res["diagnosis_test_bacc"]["today (temperature, shipped rule)"] == res_eval["diagnosis"]["metrics"]["bacc"]
    rc, _, err = _run("calibration_transfer", ["--bundle", str(tiny_bundle), "--eval-dir", str(ev)], capsys)
    assert rc == 2 and "evaluated bundle" in err  # another bundle's evaluation is refused


def test_a_bench_runs_as_a_file_from_anywhere(tmp_path: Path) -> None:
    """``python bench/NAME.py`` (the tests above import the benches as the package, as ``python -m bench.NAME`` does)."""
    script = Path(__file__).resolve().parents[2] / "bench" / "tta_speed.py"
    argv = ["--backbone", "test_resnet", "--size", "32x32", "--batches", "1", "--repeats", "1", "--threads", "1"]
    run = subprocess.run([sys.executable, str(script), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["results"][0]["batch"] == 1


def test_levers_pairs_tta_metadata_and_ensemble_on_the_same_images(calibrated_fusion_bundle: Path, tmp_path: Path, capsys) -> None:
    import numpy as np

    from skinlesion.ensemble.build import SPLIT_LOGITS, SPLIT_LOGITS_NO_METADATA, load_split_logits
    from skinlesion.ensemble.bundle import BundleError, load_bundle
    from skinlesion.evaluation import evaluate_bundle

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(calibrated_fusion_bundle, bundle_dir)
    evaluate_bundle(bundle_dir, split="test", out_dir=tmp_path / "eval", n_boot=0)
    assert (tmp_path / "eval" / SPLIT_LOGITS_NO_METADATA).is_file()
    rc, res, err = _run("levers", [str(bundle_dir), "--test", "--n-boot", "20"], capsys)
    assert rc == 0, err
    rc, reused, err = _run("levers", [str(bundle_dir), "--test", "--n-boot", "20", "--eval-dir", str(tmp_path / "eval")], capsys)
    assert rc == 0, err
    assert reused["levers"] == res["levers"]  # the saved test logits are the ones a fresh run computes
    with np.load(tmp_path / "eval" / SPLIT_LOGITS) as z:
        ids = [str(i) for i in z["image_id"]]
        np.savez(tmp_path / "stale.npz", **{**{k: z[k] for k in z.files}, "weights_sha256": np.asarray(["0" * 64] * 2)})
    with pytest.raises(BundleError, match=r"it was computed for other weights of members \[.*\]\. Evaluate the bundle again"):
        load_split_logits(tmp_path / "stale.npz", load_bundle(bundle_dir), ids)
    levers = res["levers"]
    names = sorted(levers)
    assert any(n.startswith("tta: ") for n in names) and any(n.startswith("metadata: given vs hidden") for n in names)
    assert sum(n.startswith("ensemble: 2 members vs") for n in names) == 2
    for lever in levers.values():
        for m in ("bacc", "mel_auc"):
            r = lever[m]
            assert r["difference"] == pytest.approx(r["variant"] - r["reference"])
            assert r["ci"][0] <= r["difference"] <= r["ci"][1]


def test_stacking_is_cross_fitted_and_reads_the_metadata() -> None:
    import numpy as np
    import pandas as pd

    from bench.levers import metadata_matrix, stacked_probabilities

    frame = pd.DataFrame({"age": [30.0, None, 70.0], "sex": ["male", "unknown", "FEMALE"], "site": ["back", None, "face"]})
    m = metadata_matrix(frame)
    # age / 100 (missing: the mean, flagged), sex one-hot (female, male), site one-hot (back, face)
    np.testing.assert_allclose(m, [[0.3, 0, 0, 1, 1, 0], [0.5, 1, 0, 0, 0, 0], [0.7, 0, 1, 0, 0, 1]])

    rng = np.random.default_rng(0)
    n = 600
    site = rng.integers(0, 3, n)
    y = site.copy()  # the class is the site: only the metadata column tells it
    folds = np.arange(n) % 3
    noise = rng.normal(size=(n, 3))
    with_site = stacked_probabilities(np.hstack([noise, np.eye(3)[site]]), y, folds)
    without = stacked_probabilities(noise, y, folds)
    assert (with_site.argmax(1) == y).mean() > 0.95 and (without.argmax(1) == y).mean() < 0.5
    # every fold's rows come from a model fitted on the other folds: relabelling fold 0 leaves them unchanged
    y2 = y.copy()
    y2[folds == 0] = (y2[folds == 0] + 1) % 3
    again = stacked_probabilities(np.hstack([noise, np.eye(3)[site]]), y2, folds)
    np.testing.assert_allclose(again[folds == 0], with_site[folds == 0])
    assert not np.allclose(again[folds == 1], with_site[folds == 1])


def test_levers_versus_names_the_input_size_and_pairs_the_same_rows(tiny_members: list[Path], tmp_path: Path, capsys) -> None:
    from skinlesion.ensemble.build import build_bundle

    kw = {"weighting": "uniform", "tta": "flips", "temperature": "none"}
    build_bundle(tiny_members, tmp_path / "big", input_size=(72, 96), **kw)
    build_bundle(tiny_members, tmp_path / "plain", **kw)
    rc, res, err = _run("levers", [str(tmp_path / "big"), "--versus", str(tmp_path / "plain"), "--test", "--n-boot", "20"], capsys)
    assert rc == 0, err
    val = res["levers"]["input size: 72x96 vs 48x64/56x56 (validation)"]["bacc"]
    test = res["levers"]["input size: 72x96 vs 48x64/56x56 (test)"]["mel_auc"]
    assert val["difference"] == pytest.approx(val["variant"] - val["reference"])
    assert test["difference"] == pytest.approx(test["variant"] - test["reference"])
    rc, same, err = _run("levers", [str(tmp_path / "plain"), "--versus", str(tmp_path / "plain"), "--n-boot", "20"], capsys)
    assert rc == 0, err
    lever = same["levers"][next(n for n in same["levers"] if n.startswith("bundle "))]["bacc"]
    assert lever["difference"] == 0 and lever["ci"] == [0, 0]
    build_bundle(tiny_members[:1], tmp_path / "one", **kw)
    rc, _, err = _run("levers", [str(tmp_path / "big"), "--versus", str(tmp_path / "one")], capsys)
    assert rc == 2 and "weights or TTA views differ" in err


def test_risk_coverage_compare_scores_every_source_on_the_same_images(calibrated_bundle: Path, tmp_path: Path, capsys) -> None:
    argv = [str(calibrated_bundle), "--compare", "--n-samples", "2", "--ood", "--max-images", "12", "--n-boot", "20",
            "--plot", str(tmp_path / "rc.png"), "--curves", str(tmp_path / "rc.csv")]
    rc, res, err = _run("risk_coverage", argv, capsys)
    assert rc == 0, err
    test = res["test"]
    assert test["n"] == 12 and set(test["scores"]) == {
        "max_prob", "decision_prob", "predictive_entropy", "members_x_views_mutual_information", "members_mutual_information",
        "mc_dropout_mutual_information", "mc_dropout_predictive_entropy", "ood_score",
    }
    assert test["best"] in test["scores"] and "aurc_minus_max_prob_ci" in test["scores"]["ood_score"]
    assert res["errors_of"] == "the bundle's decision (policy 'diagnosis')"  # what the clinician is shown, not the argmax
    assert "members_x_views_mutual_information" in res["validation"]["scores"]  # a plain (not cross-fitted) bundle
    assert (tmp_path / "rc.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "rc.csv").read_text().splitlines()
    assert rows[0] == "score,coverage,risk" and {r.split(",")[0] for r in rows[1:]} == set(test["scores"])


def test_metadata_pass_compares_one_and_two_passes_on_fusion_members(
    calibrated_fusion_bundle: Path, calibrated_bundle: Path, capsys
) -> None:
    rc, res, err = _run("metadata_pass", [str(calibrated_fusion_bundle), "--images", "6", "--repeats", "1"], capsys)
    assert rc == 0, err
    assert res["images"] == 6 and len(res["members"]) == 1
    m = res["members"][0]
    assert len(m["seconds"]["one_pass"]) == len(m["seconds"]["two_passes"]) == 1 and m["median_ratio_two_over_one"] > 0
    assert m["max_abs_diff"]["with_metadata"] < 1e-5 and m["max_abs_diff"]["metadata_hidden"] < 1e-5
    rc, _, err = _run("metadata_pass", [str(calibrated_bundle)], capsys)  # image-only members: a one-line error
    assert rc == 2 and "no metadata fusion member" in err


def test_table_engine_times_both_engines_on_the_same_logits(calibrated_fusion_bundle: Path, capsys) -> None:
    rc, res, err = _run("table_engine", [str(calibrated_fusion_bundle), "--images", "6", "--repeats", "2"], capsys)
    assert rc == 0, err
    assert res["images"] == 6 and res["member"] == "m0-test_efficientnet"
    assert all(len(v) == 2 for v in res["seconds"].values()) and res["median_ratio_torch_over_onnx"] > 0
    assert set(res["ms_per_image_view"]) == {"torch", "onnx"}
    assert max(res["max_abs_diff"].values()) < 1e-4


def test_recipe_jobs_times_sequential_and_side_by_side_trainings(tiny_members: list[Path], capsys) -> None:
    syn = tiny_members[0].parents[1] / "synthetic"
    argv = ["--preset", "tiny", "--no-folds", "--root", str(syn), "--train-batches", "2", "--val-batches", "1",
            "--rounds", "1", "--cores", "2", "--set", "model.input_size=[32,32]"]
    rc, res, err = _run("recipe_jobs", argv, capsys)
    assert rc == 0, err
    assert res["modes"] == {"sequential": {"jobs": 1, "threads_each": 2}, "side_by_side": {"jobs": 2, "threads_each": 1}}
    seq, side = res["wall_s"]["sequential"][0], res["wall_s"]["side_by_side"][0]
    assert seq > 0 and side > 0 and res["median_speedup"] == pytest.approx(seq / side, abs=1e-3)
    rc, _, err = _run("recipe_jobs", ["--cores", "1"], capsys)
    assert rc == 2 and "--cores >= --jobs" in err


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("train_speed.py", ["--sizes", "3x3"], "--sizes must be HxW with both sides >= 8, got '3x3'"),
    ("train_speed.py", ["--size", "12"], "--size must be HxW (e.g. 144x192), got '12'"),
    ("tta_speed.py", ["--size", "bad"], "--size must be HxW (e.g. 144x192), got 'bad'"),
    ("speed.py", ["--synthetic", "--image-size", "10x10"], "--image-size must be HxW with both sides >= 32, got '10x10'"),
])
def test_bench_sizes_are_checked_with_one_message(script: str, argv: list[str], message: str, capsys) -> None:
    module = importlib.import_module(f"bench.{script.removesuffix('.py')}")  # in process: any other error raises here
    try:
        rc = module.main(argv)
    except SystemExit as e:  # argparse's usage error
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err[-2000:]


def _write_eval(folder: Path, images: list[str], truth: list[str], probs: np.ndarray, diagnosis: list[str],
                flags: list[str], refer: list[bool], order: list[int]) -> None:
    classes = ["MEL", "NV", "BKL"]
    folder.mkdir(parents=True)
    with (folder / "predictions.csv").open("w") as f:
        f.write("image," + ",".join(classes) + "\n")
        for i in order:
            f.write(images[i] + "," + ",".join(f"{p:.6f}" for p in probs[i]) + "\n")
    with (folder / "decisions.csv").open("w") as f:
        f.write("image,truth,argmax,diagnosis,priority_threshold_decision,threshold_fired,flags,refer\n")
        for i in order:
            am = classes[int(np.argmax(probs[i]))]
            f.write(f"{images[i]},{truth[i]},{am},{diagnosis[i]},{am},,{flags[i]},{'true' if refer[i] else 'false'}\n")


def test_rerun_compare_pairs_two_evaluations_image_by_image(tmp_path: Path, capsys) -> None:
    """Same images in another row order are matched by id; the differences and agreement rates are
    those of the two folders' answers, and folders of other images or other truths are refused."""
    images = [f"img{i}" for i in range(12)]
    truth = ["MEL"] * 4 + ["NV"] * 4 + ["BKL"] * 4
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=12)
    probs[:4, 0] += 1.0  # MEL images score highest on MEL
    probs /= probs.sum(1, keepdims=True)
    diagnosis = list(truth)
    diagnosis[8] = "NV"  # one BKL called NV by the reference
    flags = ["MEL"] * 4 + [""] * 8
    refer = [True] * 4 + [False] * 8
    (tmp_path / "m.csv").write_text("image_id,lesion_id\n" + "".join(f"img{i},L{i // 2}\n" for i in range(12)))
    _write_eval(tmp_path / "a", images, truth, probs, diagnosis, flags, refer, list(range(12)))
    fixed, flags_b = list(diagnosis), list(flags)
    fixed[8] = "BKL"  # the rerun gets it right...
    flags_b[3], flags_b[5] = "", "MEL"  # ...misses one melanoma's flag and flags one naevus
    _write_eval(tmp_path / "b", images, truth, probs, fixed, flags_b, refer, list(range(11, -1, -1)))
    argv = [str(tmp_path / "a"), str(tmp_path / "b"), "--manifest", str(tmp_path / "m.csv"), "--n-boot", "20"]
    rc, out, _ = _run("rerun_compare", argv, capsys)
    assert rc == 0
    m = out["metrics"]
    assert m["bacc_diagnosis"]["reference"] == pytest.approx((1 + 1 + 0.75) / 3, abs=1e-4)
    assert m["bacc_diagnosis"]["rerun"] == 1.0 and m["bacc_diagnosis"]["difference"] == pytest.approx(1 - 2.75 / 3, abs=1e-4)
    assert m["bacc_argmax"]["difference"] == 0.0 and m["auc_MEL"]["difference"] == 0.0  # same probabilities
    assert (m["flag_MEL_sensitivity"]["rerun"], m["flag_MEL_specificity"]["rerun"]) == (0.75, 0.875)
    assert out["same_answer_fraction"] == {"diagnosis": round(11 / 12, 4), "argmax": 1.0, "refer": 1.0, "flag_MEL": round(10 / 12, 4)}
    assert out["diagnosis_changes"] == 1 and out["probability_change"]["max"] == 0.0
    assert (out["n_images"], out["n_lesions"]) == (12, 6)

    truth_c = list(truth)
    truth_c[0] = "NV"
    _write_eval(tmp_path / "c", images, truth_c, probs, diagnosis, flags, refer, list(range(12)))
    rc, _, err = _run("rerun_compare", [str(tmp_path / "a"), str(tmp_path / "c"), "--manifest", str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and "different truth" in err
    _write_eval(tmp_path / "d", images[:6], truth[:6], probs[:6], diagnosis[:6], flags[:6], refer[:6], list(range(6)))
    rc, _, err = _run("rerun_compare", [str(tmp_path / "a"), str(tmp_path / "d"), "--manifest", str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and "different images (12 vs 6)" in err
    (tmp_path / "d" / "decisions.csv").write_text("image,truth,argmax,diagnosis,flags,refer\n")
    rc, _, err = _run("rerun_compare", [str(tmp_path / "d"), str(tmp_path / "a"), "--manifest", str(tmp_path / "m.csv")], capsys)
    assert rc == 2 and "decisions.csv: no row for 6 image(s) of predictions.csv, e.g. img0" in err
