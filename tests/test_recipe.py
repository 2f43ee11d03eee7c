"""The recipe: one resumable command from data to a packaged, documented bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.errors import ConfigError
from skinlesion.model_card import _quality_table, validation_curve
from skinlesion.recipe import load_recipe, package_bundle, run_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _recipe(tmp_path: Path, data_root: Path) -> Path:
    common = ["model.input_size=[48, 64]", "train.epochs=2"]
    spec = {
        "name": "t",
        "description": "tiny",
        "data_root": str(data_root),
        "members": [
            {"name": "a", "preset": "tiny", "set": [*common, "seed=1", "model.metadata=[age,sex,site]"]},
            {"name": "b", "preset": "tiny", "set": [*common, "seed=2", "model.backbone=test_resnet", "model.input_size=[56, 56]"]},
        ],
        "baseline": {"name": "base", "preset": "tiny", "set": [*common, "seed=1"]},
        "ensemble": {"weights": "bacc", "tta": "flips", "average": "prob", "temperature": "ensemble"},
        "calibrate": {"targets": "MEL:sens=0.6,spec=0.5", "confidence": 0.0},
        "review": {"n_samples": 2},
        "evaluate": {"split": "test", "n_boot": 20},
        "budget_minutes": 30,
    }
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.fixture(scope="module")
def finished(tiny_members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("recipe")
    path = _recipe(tmp, tiny_members[0].parents[1] / "synthetic")
    res = CliRunner().invoke(app, ["recipe", "run", str(path), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return path, tmp / "run"


def test_run_writes_every_step_and_a_model_card(finished: tuple[Path, Path]) -> None:
    _, out = finished
    state = json.loads((out / "recipe_state.json").read_text())
    assert list(state["steps"]) == ["train:a", "train:b", "train:base", "build", "calibrate", "review", "evaluate", "card"]
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in state["steps"].values())
    assert state["total_minutes"] == pytest.approx(sum(s["seconds"] for s in state["steps"].values()) / 60, abs=0.1)
    b = load_bundle(out / "bundle")
    assert [m.backbone for m in b.members] == ["test_efficientnet", "test_resnet"]  # members a and b, not the baseline
    assert b.thresholds["MEL"] is not None and b.meta["review"]["n_samples"] == 2
    # member a fuses metadata: the review flag has a threshold fitted with the metadata hidden too
    assert b.meta["review"]["without_metadata"]["fitted_on"] == "val, metadata hidden"
    a_meta = json.loads((out / "members" / "a" / "checkpoint" / "checkpoint.json").read_text())
    assert a_meta["model"]["metadata"]["features"] == ["age", "sex", "site"]
    card = (out / "bundle" / "MODEL_CARD.md").read_text()
    metrics = json.loads((out / "eval-test" / "metrics.json").read_text())
    assert f"{metrics['decision']['intervals']['bacc']['estimate']:.3f}" in card
    assert "CC BY-NC 4.0" in card and "not a diagnosis" in card and "vs baseline base" in card
    assert "age, sex, site" in card  # member a's metadata features
    review_test = b.meta["review"]["test"]
    assert f"catches {review_test['errors_removed']:.3f} of the {review_test['n_errors']} errors of the decision shown" in card
    assert "- without metadata (fitted with the metadata hidden" in card
    bundle_s = sum(s["seconds"] for n, s in state["steps"].items() if n not in ("train:base", "evaluate", "card"))
    assert f"the shipped bundle itself (members, build, calibrate, review) took {bundle_s / 60:.1f} min" in card
    # The epoch evidence: each trained model's validation BACC after every epoch, from its own log.
    assert "## Validation BACC after each epoch" in card
    for name in ("a", "b", "base"):
        curve = validation_curve(out / "members" / name)
        assert len(curve) == 2  # train.epochs=2
        assert f"| {name} | 2 | {', '.join(f'{v:.3f}' for _, v in curve)} |" in card


def test_validation_curve_keeps_the_last_value_of_a_resumed_epoch(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train_loss_epoch,train_loss_step,val_bacc,val_loss\n"
        "0,9,,2.2,,\n0,185,,,0.41,1.9\n1,371,,,0.52,1.7\n1,371,,,0.55,1.6\n2,400,,1.1,,\n"
    )
    assert validation_curve(tmp_path) == [(1, 0.41), (2, 0.55)]
    assert validation_curve(tmp_path / "absent") == []


def test_rerun_skips_finished_steps(finished: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path, out = finished
    import skinlesion.train.run as run_mod

    monkeypatch.setattr(run_mod, "train", lambda *a, **k: pytest.fail("a finished member was retrained"))
    recipe, p = load_recipe(path)
    before = json.loads((out / "recipe_state.json").read_text())
    state = run_recipe(recipe, p, out)
    assert state["steps"] == before["steps"]


def test_an_interrupted_run_resumes_at_the_missing_step(finished: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    path, out = finished
    work = tmp_path / "run"
    shutil.copytree(out, work)
    state = json.loads((work / "recipe_state.json").read_text())
    for step in ("review", "evaluate", "card"):
        del state["steps"][step]  # as if the session ended during the review fit
    (work / "recipe_state.json").write_text(json.dumps(state))
    recipe, p = load_recipe(path)
    ran: list[str] = []
    run_recipe(recipe, p, work, on_step=lambda step, _: ran.append(step))
    assert ran == ["review", "evaluate", "card"]


def test_package_copies_a_loadable_bundle_with_its_card(finished: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = finished
    dest = package_bundle(out, tmp_path / "default_bundle")
    assert (dest / "MODEL_CARD.md").is_file() and not (dest / "eval-test").exists()
    packaged = load_bundle(dest)
    assert packaged.bundle_id == load_bundle(out / "bundle").bundle_id
    from skinlesion.data.synthetic import generate_lesion
    from skinlesion.delivery.engine import Predictor

    record = Predictor(packaged, mc_samples=0).predict([generate_lesion("MEL", seed=0)[0]])[0]
    assert record["ood"] is not None and record["ood"]["threshold"] > 0  # the gate's arrays came along


def test_bad_recipes_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a file nor a packaged recipe.*ham10000-cpu"):
        load_recipe("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "members": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(ConfigError, match="distinct"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "members": [{"name": "a", "epochs": 3}]}))
    with pytest.raises(ConfigError, match="epochs"):
        load_recipe(bad)
    bad.write_text(yaml.safe_dump({"name": "x", "members": [{"name": "a"}], "ensemble": {"input_size": [4, 160]}}))
    with pytest.raises(ConfigError, match=r"input_size must be \[H, W\] with both >= 8, got \[4, 160\]"):
        load_recipe(bad)


def test_the_packaged_recipe_is_valid() -> None:
    r, _ = load_recipe("ham10000-cpu")
    assert len(r.members) >= 2 and r.baseline is not None and r.budget_minutes <= 120
    assert all("model.metadata=[age,sex,site]" in m.set for m in r.members)


def test_quality_rows_are_tabulated_with_their_intervals() -> None:
    iv = {"value": 0.7321, "ci95": [0.6724, 0.7931]}
    q = {"n_images": 10, "n_lesions": 8, "subsampled": False, "bootstrap": {"n_boot": 50},
         "rows": {"baseline": {"description": "plain", "bacc": {"value": 0.6, "ci95": [0.5, 0.7]}},
                  "shipped": {"description": "rule", "bacc": iv, "sensitivity_MEL": iv}}}
    lines: list[str] = []
    _quality_table(lines.append, q)
    text = "\n".join(lines)
    assert "| baseline | plain | 0.600 [0.500, 0.700] | - |" in text
    assert "| shipped | rule | 0.732 [0.672, 0.793] | - | 0.732 [0.672, 0.793] |" in text
    assert "10 images / 8 lesions" in text and "50 paired" in text and "SUBSAMPLED" not in text


def test_cross_fitted_recipe_runs_every_step_out_of_fold(tmp_path: Path) -> None:
    """The ham10000-cv5 shape on tiny data: members on folds of a k-fold manifest (fast training
    path), a bundle validated out-of-fold, calibration, an out-of-fold review flag, test evaluation
    and a model card."""
    from skinlesion.data.readers import load_dataset
    from skinlesion.data.splits import kfold_keeping_test, make_split, write_manifest
    from skinlesion.data.synthetic import write_synthetic_dataset

    data = tmp_path / "syn"
    write_synthetic_dataset(data, n_lesions_per_class=8, seed=3)
    table = load_dataset("ham10000", data)
    cv = kfold_keeping_test(table, make_split(table, val_fraction=0.2, test_fraction=0.2, seed=0), k=2, seed=0)
    write_manifest(cv, tmp_path / "cv.csv")
    fast = ["data.cache=true", "trainer.channels_last=true", "train.ema_decay=0.9", "train.keep=last",
            "train.weights_dtype=float16", "train.epochs=2", "model.metadata=[age,sex,site]",
            f"data.manifest={tmp_path / 'cv.csv'}"]
    spec = {
        "name": "cv", "data_root": str(data),
        "members": [{"name": f"f{k}", "preset": "tiny", "set": [*fast, f"data.fold={k}", f"seed={k}"]} for k in (0, 1)],
        "ensemble": {"weights": "uniform", "tta": "flips", "average": "prob", "temperature": "ensemble",
                     "input_size": [56, 72]},  # a test-time resolution above the training size (48x64)
        "calibrate": {"targets": "MEL:sens=0.6,spec=0.5", "confidence": 0.0},
        "review": {"n_samples": 2, "test": False},
        "evaluate": {"split": "test", "n_boot": 10},
    }
    path = tmp_path / "cv.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(app, ["recipe", "run", str(path), "--out", str(tmp_path / "run"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    b = load_bundle(tmp_path / "run" / "bundle")
    assert b.member_folds == {"f0-test_efficientnet": 0, "f1-test_efficientnet": 1}
    n_oof = int((cv["split"] == "train").sum())
    assert b.meta["provenance"]["n_val"] == n_oof  # every non-test image, out-of-fold
    assert 0 < b.meta["review"]["validation"]["flagged_fraction"] <= 1
    assert b.meta["decision"]["without_metadata"]["fitted_on"] == "val, metadata hidden"
    for k in (0, 1):
        cfg = json.loads((tmp_path / "run" / "members" / f"f{k}" / "checkpoint" / "checkpoint.json").read_text())
        assert cfg["config"]["trainer"]["threads"] == 1 and cfg["config"]["data"]["fold"] == k
    card = (tmp_path / "run" / "bundle" / "MODEL_CARD.md").read_text()
    assert "**Cross-fitted.**" in card and "| 56x72 (trained at 48x64) |" in card
    assert [m.input_size for m in b.members] == [(56, 72), (56, 72)]
    # the review's validation pass scores every non-test image, each with its own fold's member only
    from skinlesion.uncertainty.review_fit import uncertainty_over_split

    out = uncertainty_over_split(b, "val", n_samples=2)
    assert sorted(out["image_ids"]) == sorted(cv.loc[cv["split"] == "train", "image_id"])
    only = uncertainty_over_split(b.only("f1-test_efficientnet"), "test", n_samples=2)
    assert only["mean_probs"].shape[0] == int((cv["split"] == "test").sum())


def test_the_card_shows_levers_review_scores_and_class_aucs(finished: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from skinlesion.model_card import write_model_card

    path, out = finished
    work = tmp_path / "run"
    shutil.copytree(out, work)
    diff = {"reference": 0.6, "variant": 0.65, "difference": 0.05, "ci": [0.01, 0.09]}
    (work / "levers.json").write_text(json.dumps({"n_boot": 20, "levers": {"tta: 4 views vs identity (validation)": {"bacc": diff, "mel_auc": diff}}}))
    score = {"aurc": 0.2, "aurc_ci": [0.1, 0.3], "e_aurc": 0.1, "errors_caught_at_0.2": 0.4, "errors_caught_ci": [0.3, 0.5]}
    rc = {"n": 30, "n_lesions": 25, "n_errors": 9, "review_rate": 0.2, "reference": "max_prob", "best": "entropy",
          "scores": {"max_prob": score, "entropy": {**score, "aurc": 0.15, "aurc_minus_max_prob": -0.05, "aurc_minus_max_prob_ci": [-0.09, -0.01]}}}
    (work / "risk_coverage.json").write_text(json.dumps({"test": rc}))
    recipe, _ = load_recipe(path)
    assert "risk_coverage.png" not in write_model_card(work, recipe, path).read_text()  # no plot, no link
    (work / "bundle" / "risk_coverage.png").write_bytes(b"\x89PNG")  # where --plot writes it: beside the card
    card = write_model_card(work, recipe, path).read_text()
    assert "![risk-coverage curves on test](risk_coverage.png)" in card
    assert "| tta: 4 views vs identity (validation) | 0.600 -> 0.650 | 0.050 [0.010, 0.090]" in card
    assert "| entropy (best) | 0.150 [0.100, 0.300] | 0.100 | -0.050 [-0.090, -0.010] | 0.400 [0.300, 0.500] |" in card
    assert "One-vs-rest AUC of the probabilities: MEL " in card
    # a card rewritten after the run: the earlier card step is neither a row nor part of the total
    steps = json.loads((work / "recipe_state.json").read_text())["steps"]
    assert "card" in steps and "| card |" not in card
    total = sum(s["seconds"] for n, s in steps.items() if n != "card") / 60
    assert f"Total recorded wall time: {total:.1f} min" in card


def _faith(mean: float, ref: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "reference": ref, "difference": mean - ref, "ci_low": lo, "ci_high": hi, "p_value": 0.01, "n": 20}


def test_the_card_shows_attention_faithfulness_and_concepts(finished: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from skinlesion.model_card import write_model_card

    path, out = finished
    work = tmp_path / "run"
    shutil.copytree(out, work)
    settings = {"steps": 10, "n_random": 2}
    good = {"deletion": _faith(0.2, 0.3, -0.15, -0.05), "insertion": _faith(0.5, 0.4, 0.05, 0.15),
            "mass_in_bbox": _faith(0.6, 0.4, 0.1, 0.3), "mass_in_segmentation": _faith(0.4, 0.2, 0.1, 0.3), "passes": True}
    flat = {**good, "deletion": _faith(0.29, 0.3, -0.03, 0.01), "passes": False,
            "by_prediction": {"NV": {"n": 15, "deletion": _faith(0.8, 0.78, 0.01, 0.03), "insertion": _faith(0.6, 0.5, 0.05, 0.15)}}}
    (work / "faithfulness_selection.json").write_text(json.dumps(
        {"split": "val", "n": 20, "n_lesions": 20, "settings": settings, "chosen": "layercam@blocks.4",
         "summary": {"layercam@blocks.4": good, "gradcam@bn2": flat}}))
    from skinlesion._hashing import sha256_file

    now = sha256_file(work / "bundle" / "bundle.json")
    (work / "faithfulness.json").write_text(json.dumps(
        {"split": "test", "n": 20, "n_lesions": 19, "accuracy": 0.8, "settings": settings, "summary": {"gradcam@bn2": flat},
         "bundle_id": "ab" * 32}))  # measured on another build of the bundle: said so
    (work / "tcav.json").write_text(json.dumps({
        "summary": {"settings": {"split": "test", "n_per_class": 40, "n_runs": 10, "correction": "bonferroni", "alpha": 0.05,
                                 "bundle_id": now},
                    "n_tests": 21, "notes": ["large (diameter > 6 mm): unknown for every image"]},
        "per_class": {"MEL": {"line": "MEL: none of the 3 concepts tested is significant (random-CAV test)."},
                      "NV": {"line": "NV: asymmetric lowers the NV logit (TCAV 0.11 vs random 0.53, corrected p 7.4e-05)."}},
    }))
    (work / "fold_ablations").mkdir()
    ch = {"estimate": 0.026, "low": -0.013, "high": 0.065}
    (work / "fold_ablations" / "test-size-144x192.json").write_text(json.dumps({
        "fold": 0, "n_images": 40, "change": {"d4": {"bacc": ch, "mel_auc": ch}},
        "models": {"reference": {"checkpoint": "m/f0/checkpoint", "input_size": [120, 160]},
                   "variant": {"checkpoint": "m/f0/checkpoint", "input_size": [144, 192]}}}))
    recipe, _ = load_recipe(path)
    card = write_model_card(work, recipe, path).read_text()
    assert "| test-size-144x192 (fold 0, 40 images) | f0 at 120x160 | f0 at 144x192 | d4 | 0.026 [-0.013, 0.065] |" in card
    assert "| layercam@blocks.4 (largest gain) | 0.200 vs 0.300: -0.100 [-0.150, -0.050] |" in card
    assert "| gradcam@bn2 | 0.290 vs 0.300: -0.010 [-0.030, 0.010] |" in card
    assert "Configuration **gradcam@bn2** on the test split (20 images of 19 lesions" in card
    assert "gradcam@bn2 does NOT beat random maps on every measure: deletion." in card
    assert "- NV (15 images): deletion 0.020 [0.010, 0.030], insertion 0.100 [0.050, 0.150]" in card
    assert "- MEL: none of the 3 concepts tested is significant" in card and "bonferroni correction over 21 tests" in card
    assert "- Note: large (diameter > 6 mm)" in card
    assert card.count("**Measured on an earlier build of this bundle**") == 1  # the faithfulness result only
    assert f"(bundle id abababababab, this card's is {now[:12]}): these numbers describe that build" in card


def test_package_carries_only_a_shared_fp32_onnx_export(finished: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from skinlesion.delivery.onnx_export import export_bundle_onnx

    _, out = finished
    work = tmp_path / "run"
    shutil.copytree(out, work)
    export_bundle_onnx(load_bundle(work / "bundle"), n_parity=1)  # whole graphs: a copy of the weights
    assert not (package_bundle(work, tmp_path / "whole") / "onnx").exists()
    export_bundle_onnx(load_bundle(work / "bundle"), n_parity=1, share_weights=True)
    dest = package_bundle(work, tmp_path / "shared")
    from skinlesion.delivery.engine import Predictor

    assert Predictor(load_bundle(dest), mc_samples=0).engine_name == "onnx-fp32"


def test_wall_time_counts_side_by_side_trainings_once() -> None:
    from skinlesion._timing import wall_seconds

    at = "2026-12-07T10:00:00+00:00"
    later = "2026-12-07T10:01:00+00:00"  # 60 s after `at`
    far = "2026-12-07T11:00:00+00:00"
    steps = {
        "train:a": {"seconds": 100.0, "concurrent": True, "started": at},  # [0, 100]
        "train:b": {"seconds": 100.0, "concurrent": True, "started": later},  # [60, 160]: 40 s overlap
        "train:c": {"seconds": 10.0, "concurrent": True, "started": far},  # apart from both
        "train:d": {"seconds": 30.0, "concurrent": True, "started": at},  # inside a
        "build": {"seconds": 50.0, "started": at},  # not concurrent: adds up whatever its times
    }
    assert wall_seconds(steps) == pytest.approx(160 + 10 + 50)
    steps["train:b"]["earlier_seconds"] = 25.0  # b resumed: its earlier process took 25 s, apart
    assert wall_seconds(steps) == pytest.approx(160 + 10 + 50 + 25)
    # ... unless its start is recorded: an earlier process that ran inside a's span adds nothing,
    steps["train:b"]["earlier_processes"] = [["2026-12-07T10:00:30+00:00", 25.0]]  # [30, 55]
    assert wall_seconds(steps) == pytest.approx(160 + 10 + 50)
    # one that ran apart adds its own span, and seconds of processes of unknown start count in full
    steps["train:b"]["earlier_processes"] = [["2026-12-07T09:00:00+00:00", 20.0]]
    steps["train:b"]["earlier_seconds"] = 45.0  # 20 s known, 25 s of an older process without a start
    assert wall_seconds(steps) == pytest.approx(160 + 10 + 50 + 20 + 25)
    del steps["train:b"]["earlier_seconds"], steps["train:b"]["earlier_processes"]
    sequential = {k: {kk: vv for kk, vv in v.items() if kk != "concurrent"} for k, v in steps.items()}
    assert wall_seconds(sequential) == pytest.approx(100 + 100 + 10 + 30 + 50)


def test_a_finished_member_passes_on_when_its_earlier_processes_ran(tmp_path: Path) -> None:
    """What the recipe records of a trained member comes from its checkpoint; the starts of a resumed
    training's earlier processes travel with it, so :func:`wall_seconds` can overlap them."""
    from skinlesion.recipe.members import _train
    from skinlesion.recipe.spec import Recipe

    recipe = Recipe.model_validate({"name": "r", "members": [{"name": "a", "preset": "tiny"}]})
    ck = tmp_path / "members" / "a" / "checkpoint"
    ck.mkdir(parents=True)
    training = {"epochs_completed": 3, "wall_time_s": 70.0, "wall_time_this_process_s": 50.0,
                "earlier_processes": [["2026-12-07T10:00:00.000+00:00", 20.0]]}
    (ck / "checkpoint.json").write_text(json.dumps({"validation": {"bacc": 0.5}, "training": training}))
    info = _train(recipe, recipe.members[0], tmp_path)
    assert info["earlier_processes"] == [["2026-12-07T10:00:00.000+00:00", 20.0]]
    assert (info["training_seconds"], info["training_seconds_this_process"], info["epochs"]) == (70.0, 50.0, 3)
    training["earlier_processes"] = []  # not resumed: nothing to add
    (ck / "checkpoint.json").write_text(json.dumps({"validation": {"bacc": 0.5}, "training": training}))
    assert "earlier_processes" not in _train(recipe, recipe.members[0], tmp_path)


def test_jobs_train_members_side_by_side_and_keep_the_finished_ones(tiny_members: list[Path], tmp_path: Path) -> None:
    """``--jobs 2``: the members train in their own processes, two at a time, each with its log;
    every training is recorded in recipe order with its start, and a member that fails loses none of
    the others and is named with its log."""
    from datetime import datetime

    from skinlesion.recipe.members import cores_available

    path = _recipe(tmp_path, tiny_members[0].parents[1] / "synthetic")
    spec = yaml.safe_load(path.read_text())
    spec["baseline"]["set"].append("model.backbone=no_such_net")  # the baseline cannot train
    path.write_text(yaml.safe_dump(spec))
    recipe, p = load_recipe(path)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"member 'base' failed.*no_such_net.*members/base/train\.log"):
        run_recipe(recipe, p, out, jobs=2)
    state = json.loads((out / "recipe_state.json").read_text())
    assert list(state["steps"]) == ["train:a", "train:b"]  # both finished, in recipe order
    assert "no_such_net" in (out / "members" / "base" / "train.log").read_text()
    threads = max(1, cores_available() // 2)  # each started with half the cores
    span = {}
    for name in ("a", "b"):
        s = state["steps"][f"train:{name}"]
        assert s["concurrent"] and s["seconds"] > 0
        t0 = datetime.fromisoformat(s["started"]).timestamp()
        span[name] = (t0, t0 + s["seconds"])
        meta = json.loads((out / "members" / name / "checkpoint" / "checkpoint.json").read_text())
        assert meta["config"]["trainer"]["threads"] == threads
        assert "Checkpoint written" in (out / "members" / name / "train.log").read_text()
    overlap = min(span["a"][1], span["b"][1]) - max(span["a"][0], span["b"][0])
    assert overlap > 0  # a and b trained at the same time

    spec["baseline"]["set"].remove("model.backbone=no_such_net")  # fixed: the re-run trains the baseline, alone
    path.write_text(yaml.safe_dump(spec))
    recipe, p = load_recipe(path)
    after = run_recipe(recipe, p, out, jobs=2, only=["train:a", "train:b", "train:base"])  # a, b: kept as recorded
    trains = {k: v for k, v in after["steps"].items() if k.startswith("train:")}
    assert list(trains) == ["train:a", "train:b", "train:base"]
    assert not trains["train:base"].get("concurrent") and trains["train:a"] == state["steps"]["train:a"]
    seconds = sum(s["seconds"] for s in trains.values())
    assert after["total_minutes"] == pytest.approx((seconds - overlap) / 60, abs=0.051)  # the overlap counted once


def test_jobs_refuse_multi_device_trainings(tiny_members: list[Path], tmp_path: Path) -> None:
    recipe, p = load_recipe(_recipe(tmp_path, tiny_members[0].parents[1] / "synthetic"))
    with pytest.raises(ConfigError, match="trainer.strategy=ddp"):
        run_recipe(recipe, p, tmp_path / "run", jobs=2, machine=["trainer.strategy=ddp"])
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        run_recipe(recipe, p, tmp_path / "run", jobs=0)


def test_the_card_counts_side_by_side_trainings_once(finished: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    from skinlesion.model_card import write_model_card
    from skinlesion._timing import wall_seconds

    path, out = finished
    work = tmp_path / "run"
    shutil.copytree(out, work)
    state = json.loads((work / "recipe_state.json").read_text())
    for step in ("train:a", "train:b"):  # as if --jobs 2 had trained both at the same moment
        state["steps"][step].update(concurrent=True, started="2026-12-07T10:00:00+00:00")
    (work / "recipe_state.json").write_text(json.dumps(state))
    card = write_model_card(work, load_recipe(path)[0], path).read_text()
    timed = {k: v for k, v in state["steps"].items() if k != "card"}
    overlap = min(timed["train:a"]["seconds"], timed["train:b"]["seconds"])
    assert wall_seconds(timed) == pytest.approx(sum(s["seconds"] for s in timed.values()) - overlap)
    assert f"Total recorded wall time: {wall_seconds(timed) / 60:.1f} min" in card
    assert "| train:a (side by side) |" in card and "their overlap counts once" in card


def test_a_training_left_alone_takes_the_freed_cores() -> None:
    """--jobs: at each epoch start a training takes cores // (trainings running) torch threads."""
    import multiprocessing

    import torch

    from skinlesion.recipe.members import thread_share

    running = multiprocessing.get_context("spawn").Value("i", 2)
    share = thread_share(running, cores=4)
    before = torch.get_num_threads()
    try:
        share.on_train_epoch_start(None, None)
        assert torch.get_num_threads() == 2  # two trainings on four cores
        running.value = 1  # the other one finished
        share.on_train_epoch_start(None, None)
        assert torch.get_num_threads() == 4
        running.value = 8  # more trainings than cores: still one thread each
        share.on_train_epoch_start(None, None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _card_bundle(cross_fitted: bool) -> dict:
    bundle = {
        "members": [{"name": "a", "validation": {"bacc": 0.70}}, {"name": "b", "validation": {"bacc": 0.76}}],
        "temperature": {"mode": "ensemble", "bias": ["MEL", "NV"]},
        "validation": {"uncalibrated": {"bacc": 0.72, "nll": 1.0, "ece": 0.3}, "calibrated": {"bacc": 0.61, "nll": 0.5, "ece": 0.02},
                       "identity_view_only": {"bacc": 0.60}},
        "provenance": {"n_val": 100},
    }
    if cross_fitted:
        bundle["cross_fitting"] = {"k": 2, "member_folds": {"a": 0, "b": 1}}
    return bundle


@pytest.mark.parametrize("cross_fitted", [False, True])
def test_card_choices_compare_like_with_like(cross_fitted: bool) -> None:
    """Raw against raw, calibrated against calibrated; a cross-fitted bundle's out-of-fold rows show no ensemble."""
    from types import SimpleNamespace

    from skinlesion.model_card import _choices

    lines: list[str] = []
    dec = {"policy": "diagnosis", "diagnosis": {"bacc": 0.74, "selection": {}}, "validation": {"bacc": 0.5}}
    _choices(lines.append, _card_bundle(cross_fitted), SimpleNamespace(members=[], baseline=None), {}, {"views": ["identity", "hflip"]}, dec)
    text = "\n".join(lines)
    assert "| TTA (2 views) vs identity view (calibrated argmax) | 0.610 | 0.600 | +0.010 |" in text
    assert "| temperature and class biases vs none (argmax) | 0.610 | 0.720 | -0.110 |" in text
    assert "| diagnosis rule (per-class log-weights, in-sample) vs calibrated argmax | 0.740 | 0.610 | +0.130 |" in text
    assert "| class thresholds (priority rule) vs calibrated argmax | 0.500 | 0.610 | -0.110 |" in text
    assert "The shipped decision is the **diagnosis** rule" in text
    ensemble_row = "| ensemble of 2 vs best member (both raw argmax, TTA) | 0.720 | 0.760 | -0.040 |"
    if cross_fitted:  # each validation row comes from one member: no ensemble row, and the card says why
        assert "ensemble of 2" not in text
        assert "say nothing about averaging the 2 members" in text and "0.700 to 0.760; all rows pooled: 0.720" in text
    else:
        assert ensemble_row in text and "Out-of-fold rows" not in text


@pytest.mark.parametrize(("keep", "best_epoch", "kept"), [("last", 3, "3 (last)"), ("best", 2, "2 (best)")])
def test_card_epoch_table_names_the_epoch_kept(tmp_path: Path, keep: str, best_epoch: int, kept: str) -> None:
    from types import SimpleNamespace

    from skinlesion.model_card import _training_curves

    run = tmp_path / "members" / "a"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text("epoch,val_bacc\n0,0.5\n1,0.7\n2,0.6\n")
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "checkpoint.json").write_text(json.dumps(
        {"config": {"train": {"keep": keep}}, "training": {"best_epoch": best_epoch, "epochs_completed": 4}}))
    lines: list[str] = []
    _training_curves(lines.append, tmp_path, SimpleNamespace(members=[SimpleNamespace(name="a")], baseline=None))
    text = "\n".join(lines)
    # 4 epochs trained, 3 in the log (a resume that lost one); best of the log: epoch 2
    assert f"| a | 4 (3 logged) | 0.500, 0.700, 0.600 | 2 (0.700) | {kept} |" in text
    assert ("last epoch's" in text) == (keep == "last") and ("epoch of best validation BACC" in text) == (keep == "best")
    (run / "checkpoint" / "checkpoint.json").write_text(json.dumps({"config": {"train": {"keep": keep}}, "training": {
        "best_epoch": best_epoch, "epochs_completed": 4, "epochs_planned": 20, "stopped_at_time_cap": True}}))
    lines.clear()
    _training_curves(lines.append, tmp_path, SimpleNamespace(members=[SimpleNamespace(name="a")], baseline=None))
    assert "| a | 4 (3 logged) of 20, stopped by the time cap | 0.500, 0.700, 0.600 |" in "\n".join(lines)


def test_card_keeps_side_results_measured_before_a_review_refit(tmp_path: Path) -> None:
    """A side result (levers, faithfulness...) measured on bundle id X stays this bundle's when
    bundle.json's history shows that only the review flag was refitted since X; any other change
    since X is flagged as an earlier build."""
    from skinlesion._hashing import sha256_file
    from skinlesion.model_card import _built_on

    (tmp_path / "bundle").mkdir()
    meta = tmp_path / "bundle" / "bundle.json"

    def card_lines(history: list[dict]) -> str:
        meta.write_text(json.dumps({"history": history}))
        lines: list[str] = []
        _built_on(lines.append, {"bundle_id": "a" * 64}, tmp_path)
        return "\n".join(lines)

    only_review = [{"action": "calibrate"}, {"action": "review", "previous_bundle_id": "a" * 64}, {"action": "review", "previous_bundle_id": "b" * 64}]
    assert "only the review flag was refitted" in card_lines(only_review) and "earlier build" not in card_lines(only_review)
    assert "Measured on an earlier build" in card_lines([*only_review, {"action": "calibrate"}])
    assert "Measured on an earlier build" in card_lines([{"action": "review", "previous_bundle_id": "c" * 64}])
    lines: list[str] = []
    _built_on(lines.append, {"bundle_id": sha256_file(meta)}, tmp_path)
    assert lines == []  # measured on this very bundle.json: nothing to say
