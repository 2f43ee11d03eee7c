"""The two reference-system recipes, run end to end in smoke mode (tiny generated data in the official
ISIC file layouts, tiny networks, CPU), and the pieces they add: official-layout data, the ISIC
scorer's treatment of UNK, seeds as separate bundles with mean ± std, DDP-safe steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.data.readers.datasets import load_dataset
from skinlesion.data.synthetic import write_isic2018_layout, write_isic2019_layout
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.errors import ConfigError
from skinlesion.evaluation.official import scorer_balanced_accuracy
from skinlesion.recipe import load_recipe, run_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ISIC2019_8 = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC", "SCC"]


@pytest.fixture(scope="module")
def m19(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m19") / "run"
    res = CliRunner().invoke(app, ["recipe", "run", "melanomanet-isic2019", "--smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "(smoke)" in res.output
    return out


@pytest.fixture(scope="module")
def p18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("p18") / "run"
    res = CliRunner().invoke(app, ["recipe", "run", "paper-isic2018", "--smoke", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


# -- ISIC 2019: eight classes end to end ------------------------------------------------------------
def test_isic2019_smoke_runs_every_step_on_the_official_layout(m19: Path) -> None:
    state = json.loads((m19 / "recipe_state.json").read_text())
    assert state["recipe"] == "melanomanet-isic2019-smoke"
    assert list(state["steps"]) == ["train:v2s", "build", "calibrate", "review", "evaluate", "official-test", "concepts",
                                    "explain", "export", "card"]
    meta = json.loads((m19 / "members" / "v2s" / "checkpoint" / "checkpoint.json").read_text())
    assert meta["config"]["data"]["format"] == "isic2019"
    assert Path(meta["config"]["data"]["ground_truth"]).name == "ISIC_2019_Training_GroundTruth.csv"
    assert meta["config"]["data"]["metadata"].endswith("ISIC_2019_Training_Metadata.csv")
    manifest = pd.read_csv(m19 / "bundle" / "split_manifest.csv", dtype=str)  # lesion-disjoint
    assert manifest.dropna(subset=["lesion_id"]).groupby("lesion_id")["split"].nunique().max() == 1


def test_isic2019_bundle_has_eight_classes_thresholds_and_an_scc_referral(m19: Path) -> None:
    b = load_bundle(m19 / "bundle")
    assert list(b.classes) == ISIC2019_8
    assert set(b.thresholds) == {"MEL", "SCC", "AKIEC"}
    assert all(v is not None for v in b.thresholds.values())
    spec = b.threshold_specs()
    assert (spec["SCC"].target_sensitivity, spec["SCC"].target_specificity) == (0.85, 0.85)  # thresholded like MEL
    referral = json.loads((m19 / "bundle" / "bundle.json").read_text())["decision"]["referral"]
    assert referral["malignant_classes"] == ["MEL", "BCC", "AKIEC", "SCC"]
    assert b.meta["review"]["n_samples"] == 2
    card = (m19 / "bundle" / "MODEL_CARD.md").read_text()
    assert "eight diagnoses (MEL, NV, BCC, AKIEC, BKL, DF, VASC, SCC)" in card and "SMOKE RUN" in card
    metrics = json.loads((m19 / "eval-test" / "metrics.json").read_text())
    assert metrics["argmax"]["metrics"]["classes"] == ISIC2019_8
    header = (m19 / "eval-test" / "predictions.csv").read_text().splitlines()[0]
    assert header == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"  # the official 2019 submission layout


def test_official_test_scores_unk_as_the_isic_scorer(m19: Path) -> None:
    res = json.loads((m19 / "official-test" / "official_test.json").read_text())
    assert res["n_unk"] == 3 and res["n_images"] == 8 + 3
    assert res["categories"][-1] == "UNK" and res["recall"]["UNK"] == 0.0
    defined = [v for v in res["recall"].values() if v is not None]
    assert len(defined) == 9 and res["balanced_accuracy"] == pytest.approx(sum(defined) / 9)
    assert res["official"]["agrees"] is True  # isic-challenge-scoring on the written files
    assert res["official"]["balanced_accuracy"] == pytest.approx(res["balanced_accuracy"])
    sub = pd.read_csv(res["files"]["submission"])
    assert (sub["UNK"] == 0).all() and len(sub) == 11


def test_explanations_have_gradcampp_abcde_concepts_and_mc_uncertainty(m19: Path) -> None:
    summary = json.loads((m19 / "explain" / "summary.json").read_text())
    assert len(summary) == 2
    for s in summary:
        assert s["cam"] == "gradcam++" and s["abcde"] is True and s["concepts"] is True
        assert s["epistemic"] is not None and s["aleatoric"] is not None and s["review"] in (True, False)
        assert (m19 / "explain" / f"{s['image_id']}_cam.png").is_file()
    assert (m19 / "bundle" / "concepts" / "concepts.json").is_file()


def test_isic2019_bundle_predicts_eight_probabilities_in_torch_onnx_and_the_api(m19: Path) -> None:
    from fastapi.testclient import TestClient

    from skinlesion.data.table import read_rgb
    from skinlesion.delivery.engine import Predictor
    from skinlesion.delivery.service import create_app

    image_path = sorted((m19 / "smoke-data" / "ISIC_2019_Test_Input").glob("*.jpg"))[0]
    image = read_rgb(str(image_path))
    bundle = load_bundle(m19 / "bundle")
    torch_rec = Predictor(bundle, engine="torch", mc_samples=0).predict([image])[0]["prediction"]
    onnx_rec = Predictor(bundle, engine="onnx", mc_samples=0).predict([image])[0]["prediction"]
    for rec in (torch_rec, onnx_rec):
        assert list(rec["probabilities"]) == ISIC2019_8
        assert sum(rec["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(list(torch_rec["probabilities"].values()), list(onnx_rec["probabilities"].values()), atol=1e-4)
    onnx_manifest = json.loads((m19 / "bundle" / "onnx" / "onnx.json").read_text())
    assert onnx_manifest["classes"] == ISIC2019_8
    with TestClient(create_app(Predictor(bundle, engine="torch", mc_samples=2), audit=None)) as client:
        r = client.post("/predict", files={"file": (image_path.name, image_path.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert list(body["prediction"]["probabilities"]) == ISIC2019_8
        assert {f["class_name"] for f in body["prediction"]["flags"]} == {"MEL", "SCC", "AKIEC"}


# -- ISIC 2018: three seeds, three bundles, mean ± std -----------------------------------------------
def test_isic2018_smoke_gives_one_bundle_per_seed_and_their_mean_and_std(p18: tuple[Path, str]) -> None:
    out, output = p18
    state = json.loads((out / "recipe_state.json").read_text())
    assert state["seeds"] == [42, 7]  # the smoke's seeds (the recipe's are 42, 7, 123)
    assert list(state["steps"]) == ["seed-42", "seed-7", "seeds"]
    for seed in (42, 7):
        sub = json.loads((out / f"seed-{seed}" / "recipe_state.json").read_text())
        assert list(sub["steps"]) == ["train:resnet50", "train:densenet121", "train:efficientnet_b3", "build", "calibrate",
                                      "review", "evaluate", "explain", "export", "card"]
        member = json.loads((out / f"seed-{seed}" / "members" / "resnet50" / "checkpoint" / "checkpoint.json").read_text())
        assert member["config"]["seed"] == seed and member["config"]["data"]["format"] == "isic2018"
        assert member["config"]["data"]["split"]["seed"] == 42  # one split for every seed
        b = load_bundle(out / f"seed-{seed}" / "bundle")
        assert list(b.classes) == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"] and len(b.members) == 3
        assert b.meta["weighting"]["method"] == "bacc" and set(b.thresholds) == {"MEL", "AKIEC"}
        assert json.loads((out / f"seed-{seed}" / "explain" / "summary.json").read_text())[0]["cam"] == "gradcam"
    subs = [json.loads((out / f"seed-{s}" / "recipe_state.json").read_text())["steps"] for s in (42, 7)]
    trained = max(v["finished"] for st in subs for k, v in st.items() if k.startswith("train:"))
    assert trained <= min(st["build"]["finished"] for st in subs)  # every seed's trainings first (DDP-safe)
    summary = json.loads((out / "seeds.json").read_text())
    values = [r["argmax_bacc"] for r in summary["seeds"]]
    assert [r["seed"] for r in summary["seeds"]] == [42, 7] and len(values) == 2
    stats = summary["mean_std"]["argmax_bacc"]
    assert stats["mean"] == pytest.approx(float(np.mean(values)))
    assert stats["std"] == pytest.approx(float(np.std(values, ddof=1)))
    assert f"{stats['mean']:.3f} ± {stats['std']:.3f}" in (out / "seeds.md").read_text()
    assert f"test BACC {stats['mean']:.3f} ± {stats['std']:.3f}" in output


# -- the pieces --------------------------------------------------------------------------------------
def test_official_layouts_read_back_with_lesion_ids(tmp_path: Path) -> None:
    p18 = write_isic2018_layout(tmp_path / "a", lesions_per_class=3)
    t18 = load_dataset("isic2018", tmp_path / "a")
    assert t18.group_key == "lesion_id" and t18.classes == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    assert pd.read_csv(p18["ground_truth"], nrows=0).columns.tolist() == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    p19 = write_isic2019_layout(tmp_path / "b", lesions_per_class=3, test_images_per_class=1, test_unknown=2)
    gt = pd.read_csv(p19["ground_truth"])
    assert gt.columns.tolist() == ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    assert (gt["UNK"] == 0).all()
    t19 = load_dataset("isic2019", tmp_path / "b")
    assert list(t19.classes) == ISIC2019_8 and t19.notes["rows_without_lesion_id"] == 1
    test = pd.read_csv(p19["test_ground_truth"])
    assert int(test["UNK"].sum()) == 2 and len(test) == 8 + 2
    with pytest.raises(ValueError, match="'lesions_per_class' parameter must be a positive integer"):
        write_isic2019_layout(tmp_path / "c", lesions_per_class=0)


def _frame(rows: dict[str, list[float]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def test_scorer_bacc_counts_unk_ties_and_zero_weight_like_isic_challenge_scoring(tmp_path: Path) -> None:
    cols = ["MEL", "NV", "UNK"]
    truth = _frame({"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1], "d": [0, 1, 0], "ISIC_0035068": [1, 0, 0]}, cols)
    pred = _frame({"a": [0.6, 0.4, 0.0], "b": [0.5, 0.5, 0.0], "c": [0.3, 0.7, 0.0], "d": [0.1, 0.9, 0.0],
                   "ISIC_0035068": [0.0, 1.0, 0.0]}, cols)
    res = scorer_balanced_accuracy(truth, pred)
    # MEL 1/1 (ISIC_0035068 weighs 0), NV 1/2 (b is a tie: wrong), UNK 0/1
    assert res["recall"] == {"MEL": 1.0, "NV": 0.5, "UNK": 0.0} and res["undecided"] == 1
    assert res["balanced_accuracy"] == pytest.approx(0.5)
    no_unk = scorer_balanced_accuracy(truth.drop(index="c"), pred.drop(index="c"))
    assert no_unk["recall"]["UNK"] is None and no_unk["balanced_accuracy"] == pytest.approx(0.75)  # absent: skipped
    pytest.importorskip("isic_challenge_scoring")
    from skinlesion.metrics.isic import score_with_isic_challenge_scoring

    full = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    rng = np.random.default_rng(0)
    y = np.r_[np.arange(9), rng.integers(0, 9, 30)]
    p = rng.dirichlet(np.ones(9), len(y))
    p[:, -1] = 0.0  # an eight-class model
    ids = [f"ISIC_{i:07d}" for i in range(len(y))]
    t, q = pd.DataFrame(np.eye(9)[y], index=ids, columns=full), pd.DataFrame(p, index=ids, columns=full)
    t.rename_axis("image").to_csv(tmp_path / "truth.csv")
    q.rename_axis("image").to_csv(tmp_path / "pred.csv")
    ours = scorer_balanced_accuracy(t, q)["balanced_accuracy"]
    assert ours == pytest.approx(score_with_isic_challenge_scoring(tmp_path / "truth.csv", tmp_path / "pred.csv")["balanced_accuracy"])
    with pytest.raises(ValueError, match="must equal the truth columns"):
        scorer_balanced_accuracy(t, q.drop(columns="UNK"))


def test_smoke_needs_a_smoke_section_and_known_member_names(tmp_path: Path) -> None:
    recipe, path = load_recipe("ham10000-cv5")
    with pytest.raises(ConfigError, match="has no smoke section: it cannot run with --smoke"):
        run_recipe(recipe, path, tmp_path / "x", smoke=True)
    raw = yaml.safe_load(load_recipe("melanomanet-isic2019")[1].read_text())
    raw["smoke"]["members"] = {"v2": ["model.backbone=test_resnet"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    r, p = load_recipe(bad)
    with pytest.raises(ConfigError, match=r"smoke.members names unknown member\(s\) \['v2'\]; the members are \['v2s'\]"):
        run_recipe(r, p, tmp_path / "y", smoke=True)


def test_recipe_rejects_repeated_seeds(tmp_path: Path) -> None:
    raw = yaml.safe_load(load_recipe("paper-isic2018")[1].read_text())
    raw["seeds"] = [42, 7, 42]
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"seeds must be distinct, got \[42, 7, 42\]"):
        load_recipe(f)


def test_missing_official_test_set_is_noted_or_an_error(m19: Path, tmp_path: Path) -> None:
    from skinlesion.recipe import steps as recipe_steps

    work = tmp_path / "run"
    shutil.copytree(m19 / "bundle", work / "bundle")
    recipe, _ = load_recipe("melanomanet-isic2019")  # the GPU recipe: data/isic2019/... is not here
    res = recipe_steps.official_test(recipe, work)
    assert "skinlesion data download isic2019 --split test" in res["skipped"]
    strict = recipe.model_copy(update={"official_test": recipe.official_test.model_copy(update={"required": True})})
    with pytest.raises(ConfigError, match="official test set not found"):
        recipe_steps.official_test(strict, work)


def test_a_ddp_worker_only_joins_the_trainings(m19: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank > 0 (torchrun/SLURM/Lightning's launcher) trains but never builds, evaluates or writes the state."""
    import skinlesion.train.run as run_mod

    work = tmp_path / "run"
    shutil.copytree(m19, work)
    state = json.loads((work / "recipe_state.json").read_text())
    state["steps"] = {}
    (work / "recipe_state.json").write_text(json.dumps(state))
    shutil.rmtree(work / "members" / "v2s" / "checkpoint")  # as if the member were not trained yet
    before = (work / "recipe_state.json").read_text()
    trained: list[str] = []
    monkeypatch.setattr(run_mod, "train", lambda cfg, run_dir, resume, **_: trained.append(cfg.name))
    monkeypatch.setenv("RANK", "1")
    recipe, path = load_recipe("melanomanet-isic2019")
    run_recipe(recipe, path, work, smoke=True, machine=["trainer.devices=2", "trainer.strategy=ddp"])
    assert trained == ["melanomanet-isic2019-smoke-v2s"]
    assert (work / "recipe_state.json").read_text() == before
    assert not (work / "members" / "v2s" / "checkpoint").exists()


@pytest.mark.slow
def test_recipe_smoke_on_two_ddp_processes_gloo(tmp_path: Path) -> None:
    """A real 2-process DDP recipe run on the CPU (gloo), launched as users launch it: rank 1 joins the
    training and leaves; rank 0 alone builds, calibrates, evaluates, explains, exports and reports."""
    out = tmp_path / "ddp"
    import skinlesion

    src = str(Path(skinlesion.__file__).resolve().parents[1])  # this checkout, whatever the cwd
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "skinlesion", "recipe", "run", "melanomanet-isic2019", "--smoke", "--out", str(out),
           "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((out / "members" / "v2s" / "checkpoint" / "checkpoint.json").read_text())
    assert (meta["training"]["devices"], meta["training"]["strategy"]) == (2, "DDPStrategy")
    assert proc.stdout.count("step card done") == 1  # one rank reports
    state = json.loads((out / "recipe_state.json").read_text())
    assert list(state["steps"])[-1] == "card" and load_bundle(out / "bundle").classes[-1] == "SCC"


@pytest.mark.parametrize("name", ["paper-isic2018", "melanomanet-isic2019"])
def test_the_gpu_recipes_members_are_valid_configs_of_registered_backbones(name: str) -> None:
    from skinlesion.models.registry import get_spec
    from skinlesion.train.config import load_config

    recipe, _ = load_recipe(name)
    for m in recipe.members:
        cfg = load_config(m.preset, [*recipe.set, *m.set])
        get_spec(cfg.model.backbone)  # raises for an unknown backbone
        assert cfg.model.pretrained == "hub" and cfg.trainer.precision == "16-mixed"
        assert cfg.data.format == name.rsplit("-", 1)[1] and cfg.data.metadata  # lesion ids: split by lesion
        assert cfg.data.split.seed == 42
    backbones = {load_config(m.preset, [*recipe.set, *m.set]).model.backbone for m in recipe.members}
    expected = {"resnet50", "densenet121", "efficientnet_b3"} if name == "paper-isic2018" else {"tf_efficientnetv2_s"}
    assert backbones == expected
