"""Metadata fusion end to end on synthetic lesions: config switch, training (metadata dropout, head
learning rate), checkpoint round trip, evaluation and ensemble build with the table's metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.data.metadata import MetadataEncoder
from skinlesion.ensemble.build import build_bundle, load_validation_cache
from skinlesion.ensemble.bundle import bundle_from_checkpoint
from skinlesion.ensemble.predict import member_view_logits
from skinlesion.errors import CheckpointError, ConfigError
from skinlesion.evaluation import evaluate_checkpoint, load_split_table
from skinlesion.ensemble.bundle import VALIDATION_NO_METADATA_CACHE
from skinlesion.inference import table_view_logits
from skinlesion.inference.tta import tta_logits, tta_logits_with_hidden
from skinlesion.models import MetadataFusionNet, create_fusion_model
from skinlesion.models.checkpoint import load_checkpoint
from skinlesion.train.config import load_config
from skinlesion.train.data import load_table, prepare_data
from skinlesion.train.module import LesionClassifier
from skinlesion.train.run import _metadata_encoder
from skinlesion.uncertainty import ensemble_mc_predict

runner = CliRunner()
FEATURES = ["age", "sex", "site"]
ON = ["model.metadata=[age,sex,site]"]


@pytest.fixture(scope="module")
def fusion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fusion") / "run"
    r = runner.invoke(app, ["train", "-c", "tiny", "--set", ON[0], "--set", "train.epochs=2", "--out", str(run_dir)])
    assert r.exit_code == 0, r.output
    return run_dir


def _split(run_dir: Path, split: str):  # noqa: ANN202 - a LesionTable
    ck = load_checkpoint(run_dir)
    return load_split_table(ck.meta, (ck.path / ck.meta["data"]["manifest"]).resolve(), split, ck.classes, run_dir=run_dir)[0]


# -- config --------------------------------------------------------------------------------------------


def test_config_switch_is_off_by_default_and_validated() -> None:
    cfg = load_config("tiny")
    assert cfg.model.metadata is None and cfg.model.metadata_dropout == 0.1 and cfg.model.metadata_hidden == 256
    assert load_config("tiny", ["model.metadata=site,age"]).model.metadata == ["age", "site"]
    for override, match in [
        ("model.metadata=[age,weight]", r"model\.metadata\.1: Input should be 'age', 'sex' or 'site'"),
        ("model.metadata=[age,age]", r"model\.metadata: .*names \['age'\] more than once"),
        ("model.metadata=[]", r"model\.metadata: .*at least one of age, sex, site, or be null"),
        ("model.metadata_dropout=1", r"model\.metadata_dropout: Input should be less than 1"),
        ("model.metadata_hidden=0", r"model\.metadata_hidden: Input should be greater than 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config("tiny", [override])
    with pytest.raises(ConfigError, match=r"model\.metadata needs train\.batch_size >= 2"):
        load_config("tiny", [*ON, "train.batch_size=1"])


def test_dataset_without_the_columns_is_a_config_error(tmp_path: Path) -> None:
    from skinlesion.data.readers import read_folder
    from PIL import Image

    for cls in ("mel", "nv"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "f" / cls / "a.jpg")
    table = read_folder(tmp_path / "f")
    cfg = load_config("tiny", ["data.format=folder", f"data.root={tmp_path / 'f'}", *ON])
    with pytest.raises(ConfigError, match=r"model\.metadata asks for \['age', 'sex', 'site'\], which the folder data"):
        _metadata_encoder(cfg, table)
    assert _metadata_encoder(load_config("tiny"), table) is None


# -- the training module -------------------------------------------------------------------------------


def _module(model: MetadataFusionNet, **kw: float) -> LesionClassifier:
    args = dict(lr=1e-2, weight_decay=0.0, backbone_lr_factor=0.1, warmup_epochs=0, min_lr_ratio=1.0)
    return LesionClassifier(model, torch.nn.CrossEntropyLoss(), **{**args, **kw}, n_classes=3)  # type: ignore[arg-type]


def _fusion_model() -> MetadataFusionNet:
    torch.manual_seed(0)
    records = [{"age": 30, "sex": "male", "site": "back"}, {"age": 70, "sex": "female", "site": "face"}]
    return create_fusion_model("test_efficientnet", MetadataEncoder().fit(records), num_classes=3, drop_rate=0.0)


def test_new_modules_get_the_head_learning_rate() -> None:
    model = _fusion_model()
    module = _module(model)

    class _Trainer:
        estimated_stepping_batches = 10
        max_epochs = 1

    module.trainer = _Trainer()  # type: ignore[assignment]
    opt = module.configure_optimizers()["optimizer"]
    head = next(g for g in opt.param_groups if g["lr"] == pytest.approx(1e-2))
    assert {id(p) for p in head["params"]} == {id(p) for m in model.head_modules() for p in m.parameters()}
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups if g is not head)


def test_metadata_dropout_hides_metadata_in_training_steps_only() -> None:
    model = _fusion_model()
    module = _module(model, metadata_dropout=0.99)
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    meta = torch.from_numpy(model.metadata_encoder.encode([{"age": 50, "sex": "male", "site": "face"}] * 4))
    torch.manual_seed(0)
    module.train()
    module.training_step((x, y, torch.arange(4), meta), 0)
    assert (seen[-1] == model.missing_metadata).all()  # p = 0.99: every row hidden with this seed
    module.eval()
    module.validation_step((x, y, torch.arange(4), meta), 0)
    assert torch.equal(seen[-1], meta)
    assert _module(model).metadata_dropout == 0.0  # image-only default


# -- end to end ----------------------------------------------------------------------------------------


def test_checkpoint_records_the_encoder_fitted_on_the_train_split(fusion_run: Path) -> None:
    meta = json.loads((fusion_run / "checkpoint" / "checkpoint.json").read_text())
    md = meta["model"]["metadata"]
    assert md["features"] == FEATURES and md["hidden"] == 256 and md["metadata_dropout"] == 0.1
    assert meta["config"]["model"]["metadata"] == FEATURES
    cfg = load_config("tiny", ON)
    data = prepare_data(cfg.data, fusion_run)
    assert md["encoder"] == MetadataEncoder(FEATURES).fit(data.splits["train"]).to_dict()
    everything = MetadataEncoder(FEATURES).fit(load_table(cfg.data, fusion_run)).to_dict()
    assert md["encoder"]["age_mean"] != everything["age_mean"]  # not fitted on val/test rows


def test_checkpoint_round_trips_the_wrapper(fusion_run: Path) -> None:
    ck = load_checkpoint(fusion_run)
    assert isinstance(ck.model, MetadataFusionNet) and not ck.model.training
    saved = json.loads((fusion_run / "checkpoint" / "checkpoint.json").read_text())["model"]["metadata"]
    assert ck.model.metadata_encoder.to_dict() == saved["encoder"]
    assert ck.model.drop_rate == saved["drop_rate"] and ck.model.hidden == saved["hidden"]
    weights = load_file(str(fusion_run / "checkpoint" / "weights.safetensors"))
    state = ck.model.state_dict()
    assert set(weights) == set(state) and "missing_metadata" in weights
    assert all(torch.equal(weights[k], state[k]) for k in weights)


def test_validation_metrics_were_computed_with_the_metadata(fusion_run: Path) -> None:
    from skinlesion.metrics.classification import compute_classification_metrics

    ck = load_checkpoint(fusion_run)
    val = _split(fusion_run, "val")
    logits = table_view_logits(ck.model, val, ck.preprocessing)[:, 0]
    m = compute_classification_metrics(val.labels(), torch.softmax(torch.from_numpy(logits), 1).numpy(), ck.classes)
    assert m["bacc"] == pytest.approx(ck.meta["validation"]["bacc"], abs=1e-9)


def test_evaluation_uses_the_tables_metadata(fusion_run: Path, tmp_path: Path) -> None:
    res = evaluate_checkpoint(fusion_run, split="test", out_dir=tmp_path / "ev", n_boot=20)
    assert res["provenance"]["metadata_used"] == FEATURES
    written = pd.read_csv(tmp_path / "ev" / "predictions.csv").set_index("image")
    ck = load_checkpoint(fusion_run)
    test = _split(fusion_run, "test")
    ids = test.frame["image_id"].astype(str).tolist()
    probs = written.loc[ids].to_numpy()

    def softmax(use: bool) -> np.ndarray:
        z = table_view_logits(ck.model, test, ck.preprocessing, use_metadata=use)[:, 0]
        return torch.softmax(torch.from_numpy(z), 1).numpy()

    np.testing.assert_allclose(probs, softmax(True), atol=1e-4)  # the CSV has 6 decimals or more
    assert np.abs(softmax(False) - softmax(True)).max() > 1e-3  # hiding the metadata changes predictions
    r = runner.invoke(app, ["evaluate", str(fusion_run), "--split", "val", "--out", str(tmp_path / "cli"), "--n-boot", "0"])
    assert r.exit_code == 0, r.output


def test_ensemble_build_runs_fusion_members_with_metadata(fusion_run: Path, tmp_path: Path) -> None:
    bundle = build_bundle([fusion_run], tmp_path / "b", weighting="uniform", tta="flips", temperature="none")
    cached, _, _ = load_validation_cache(bundle)
    val = _split(fusion_run, "val")
    member = bundle.members[0]
    with_meta = member_view_logits(member, val, bundle.tta.views)
    hidden = member_view_logits(member, val, bundle.tta.views, use_metadata=False)
    np.testing.assert_allclose(cached[0], with_meta, rtol=1e-5, atol=1e-5)
    assert np.abs(cached[0] - hidden).max() > 1e-3
    np.testing.assert_allclose(bundle.predict_table(val).member_view_logits[0], with_meta, rtol=1e-5, atol=1e-5)
    # the same pass cached the logits with the metadata hidden (one backbone pass, the head twice)
    with np.load(bundle.path / VALIDATION_NO_METADATA_CACHE) as z:
        assert list(z["image_id"]) == list(val.frame["image_id"].astype(str))
        np.testing.assert_allclose(z["logits_0"], hidden, rtol=1e-5, atol=1e-5)


def test_one_backbone_pass_gives_the_logits_with_and_without_metadata(fusion_run: Path) -> None:
    model = load_checkpoint(fusion_run).model.eval()
    x = torch.rand(3, 3, 40, 56)
    meta = model.encode_metadata([{"age": 40, "sex": "female", "site": "back"}, {"age": 70}, {}], 3)
    views = ("identity", "hflip", "vflip", "rot180")
    with torch.inference_mode():
        given, hidden = tta_logits_with_hidden(model, x, views, meta=meta, max_rows=4)
        torch.testing.assert_close(given, tta_logits(model, x, views, meta=meta), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hidden, tta_logits(model, x, views), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(given[0], hidden[0])  # the first image's metadata moves its logits
    with pytest.raises(TypeError, match="MetadataFusionNet"):
        tta_logits_with_hidden(model.backbone, x, views, meta=meta)


def test_images_mc_dropout_and_cam_on_a_loaded_fusion_checkpoint(fusion_run: Path) -> None:
    from skinlesion.explain.cam import ensemble_cam

    bundle = bundle_from_checkpoint(fusion_run)
    val = _split(fusion_run, "val")
    images = [val.load_image(i) for i in range(3)]
    records = [{k: (None if pd.isna(v) else v) for k, v in val.frame.loc[i, FEATURES].items()} for i in range(3)]
    from_table = bundle.predict_table(val.subset(val.frame["image_id"].iloc[:3])).probs
    np.testing.assert_allclose(bundle.predict_images(images, metadata=records).probs, from_table, atol=1e-5)
    mc = ensemble_mc_predict(bundle.members, images, n_samples=4, seed=0)
    assert mc.stochastic and mc.stochastic_layers[0].endswith(":head")
    cam = ensemble_cam(bundle.members, images, method="gradcam")
    assert [m.shape for m in cam.maps] == [im.shape[:2] for im in images]


def test_corrupt_metadata_record_names_the_field(fusion_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "ck"
    shutil.copytree(fusion_run / "checkpoint", bad)
    meta = json.loads((bad / "checkpoint.json").read_text())
    del meta["model"]["metadata"]["encoder"]
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"field 'model\.metadata' lacks 'encoder'"):
        load_checkpoint(bad)
    meta["model"]["metadata"]["encoder"] = {"format": "skinlesion-metadata-encoder", "features": ["age"]}
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"field 'model\.metadata' is invalid: .*lacks field"):
        load_checkpoint(bad)
