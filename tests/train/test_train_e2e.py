"""End to end on synthetic lesions with a tiny backbone: train -> checkpoint -> evaluate, resume, DDP."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.errors import CheckpointError, ConfigError
from skinlesion.evaluation import evaluate_checkpoint
from skinlesion.inference import predict_table
from skinlesion.models.checkpoint import load_checkpoint, read_checkpoint_meta
from skinlesion.train.config import load_config
from skinlesion.train.run import train

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    res = train(load_config("tiny"), run_dir=run_dir)
    assert res.checkpoint_dir == run_dir / "checkpoint"
    return run_dir


def test_checkpoint_is_weights_plus_complete_metadata(tiny_run: Path) -> None:
    ck = tiny_run / "checkpoint"
    assert (ck / "weights.safetensors").stat().st_size > 10_000
    meta = json.loads((ck / "checkpoint.json").read_text())
    assert meta["backbone"] == "test_efficientnet"
    assert meta["classes"] == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert meta["preprocessing"]["input_size"] == [48, 64]
    assert len(meta["preprocessing"]["mean"]) == 3
    sidecar = json.loads((tiny_run / "split_manifest.json").read_text())
    assert meta["data"]["split_hash"] == sidecar["hash"]
    assert meta["data"]["grouped_by_lesion"] is True
    assert 0.0 <= meta["validation"]["bacc"] <= 1.0
    assert meta["config"]["train"]["epochs"] == 1
    assert meta["training"]["best_epoch"] == 1
    assert (meta["training"]["epochs_planned"], meta["training"]["stopped_at_time_cap"]) == (1, False)
    assert meta["versions"]["torch"]
    assert (tiny_run / "config.yaml").is_file()


def test_loaded_checkpoint_reproduces_validation_metrics(tiny_run: Path) -> None:
    from skinlesion.metrics.classification import compute_classification_metrics
    from skinlesion.train.data import prepare_data

    ck = load_checkpoint(tiny_run)
    cfg = load_config("tiny")
    data = prepare_data(cfg.data, tiny_run)
    probs = predict_table(ck.model, data.splits["val"], ck.preprocessing)
    m = compute_classification_metrics(data.splits["val"].labels(), probs, ck.classes)
    assert m["bacc"] == pytest.approx(ck.meta["validation"]["bacc"], abs=1e-9)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_evaluate_writes_isic_predictions_metrics_and_report(tiny_run: Path, tmp_path: Path) -> None:
    res = evaluate_checkpoint(tiny_run, split="test", out_dir=tmp_path / "ev", n_boot=50)
    out = tmp_path / "ev"
    with open(out / "predictions.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert len(rows) - 1 == res["provenance"]["n_images"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"metrics", "intervals", "calibration", "provenance"}
    assert metrics["provenance"]["same_split_as_training"] is True
    assert metrics["provenance"]["bootstrap"]["resampled_by"] == "lesion_id"
    iv = metrics["intervals"]["bacc"]
    assert iv["low"] <= metrics["metrics"]["bacc"] <= iv["high"]
    assert "not a diagnosis" in (out / "report.html").read_text().lower()


def test_evaluate_rejects_a_manifest_edited_after_training(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    man = copy / "split_manifest.csv"
    lines = man.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.endswith(",test"))
    lines[i] = lines[i][: -len(",test")] + ",train"
    man.write_text("\n".join(lines) + "\n")
    with pytest.raises(Exception, match="(?i)hash|edited|changed"):
        evaluate_checkpoint(copy, split="test", out_dir=tmp_path / "ev", n_boot=10)


def test_finished_run_is_not_overwritten(tiny_run: Path) -> None:
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(load_config("tiny"), run_dir=tiny_run)


def test_resume_continues_from_last_state(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    train(load_config("tiny"), run_dir=run_dir)
    res = train(load_config("tiny", ["train.epochs=2"]), run_dir=run_dir, resume=True)
    meta = read_checkpoint_meta(res.checkpoint_dir)
    assert meta["training"]["epochs_completed"] == 2
    assert meta["config"]["train"]["epochs"] == 2


def test_checkpoint_errors_name_the_problem(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a skinlesion checkpoint"):
        load_checkpoint(tmp_path / "empty")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_run / "checkpoint", bad)
    meta = json.loads((bad / "checkpoint.json").read_text())
    del meta["classes"]
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing field\(s\) \['classes'\]"):
        load_checkpoint(bad)
    shutil.rmtree(bad)
    shutil.copytree(tiny_run / "checkpoint", bad)
    with open(bad / "weights.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(bad)


def test_cli_train_seeds_reports_mean_and_std(tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    r = runner.invoke(app, ["train", "-c", "tiny", "--seeds", "1,2", "--out", str(out), "--set", "train.limit_train_batches=2"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert summary["seeds"] == [1, 2]
    assert {"val_bacc_mean", "val_bacc_std"} <= set(summary)
    assert (out / "seed-1" / "checkpoint" / "checkpoint.json").is_file()
    assert "±" in r.output


def test_cli_errors_are_one_line_not_tracebacks(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "-c", "tiny", "--set", "train.epochz=1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1
    assert "train.epochz" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_cli_evaluate(tiny_run: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["evaluate", str(tiny_run), "--split", "val", "--out", str(tmp_path / "e"), "--n-boot", "20"])
    assert r.exit_code == 0, r.output
    assert "BACC" in r.output and (tmp_path / "e" / "report.html").is_file()


def test_cli_launch_flags_reach_the_trainer_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train --devices 2 --strategy ddp --accelerator cpu --num-nodes 1`` sets the trainer config the
    run is given (a real two-process DDP training on gloo runs in
    tests/test_recipe_smoke.py::test_recipe_smoke_on_two_ddp_processes_gloo)."""
    import skinlesion.train.run as run_module

    seen = []
    monkeypatch.setattr(run_module, "train", lambda cfg, run_dir=None, resume=False: seen.append(cfg) or _NoCheckpoint())
    res = runner.invoke(app, ["train", "-c", "tiny", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
                              "--num-nodes", "1", "--epochs", "3", "--out", str(tmp_path / "ddp")])
    assert res.exit_code == 0, res.output
    (cfg,) = seen
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.accelerator, cfg.trainer.num_nodes) == (2, "ddp", "cpu", 1)
    assert cfg.train.epochs == 3


class _NoCheckpoint:
    checkpoint_dir = None


def test_evaluate_without_bootstrap(tiny_run: Path, tmp_path: Path) -> None:
    res = evaluate_checkpoint(tiny_run, split="val", out_dir=tmp_path / "nb", n_boot=0)
    assert res["intervals"] is None
    assert (tmp_path / "nb" / "report.html").is_file()


def test_resume_keeps_the_epochs_logged_before_it(tmp_path) -> None:
    """Lightning's CSVLogger deletes metrics.csv when a run resumes; the earlier log is set aside and
    the model card's validation curve still shows every epoch. The recorded wall time spans both
    processes."""
    from skinlesion.model_card import validation_curve
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    cfg = load_config("tiny", [f"data.root={tmp_path / 'syn'}", "train.epochs=1"])
    run_dir = tmp_path / "run"
    before = datetime.now(timezone.utc)
    first = train(cfg, run_dir=run_dir)
    assert read_checkpoint_meta(first.checkpoint_dir)["training"]["earlier_processes"] == []
    (run_dir / "checkpoint" / "checkpoint.json").unlink()  # as if cut off after epoch 1
    cfg2 = load_config("tiny", [f"data.root={tmp_path / 'syn'}", "train.epochs=2"])
    between = datetime.now(timezone.utc)
    second = read_checkpoint_meta(train(cfg2, run_dir=run_dir, resume=True).checkpoint_dir)["training"]
    assert (run_dir / "logs" / "metrics.before-resume-1.csv").is_file()
    assert [e for e, _ in validation_curve(run_dir)] == [1, 2]
    # the wall time counts the first process up to its saved state, then this one
    earlier = second["wall_time_s"] - second["wall_time_this_process_s"]
    assert 0 < earlier <= first.wall_time_s + 0.2
    # and when that process ran, so that side-by-side trainings can count overlapping time once
    [(started, seconds)] = second["earlier_processes"]
    assert seconds == pytest.approx(earlier, abs=0.2)
    assert before - timedelta(milliseconds=1) <= datetime.fromisoformat(started) <= between - timedelta(seconds=seconds)


def test_sparse_validation_still_saves_a_resumable_state_every_epoch(tmp_path) -> None:
    """``train.val_every_n_epochs=2`` validates after epoch 2 only; ``last.ckpt`` is written after every
    epoch all the same: a run killed after its first (unvalidated) epoch resumes from it, and the kept
    weights still get their final validation pass."""
    import lightning as L
    import torch

    from skinlesion.model_card import validation_curve

    class Killed(Exception):
        pass

    class KillAtEpoch2(L.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:  # noqa: ANN001
            if trainer.current_epoch == 1:
                raise Killed

    over = [f"data.root={tmp_path / 'syn'}", "train.keep=last", "train.val_every_n_epochs=2", "train.epochs=3"]
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        train(load_config("tiny", over), run_dir=run_dir, extra_callbacks=[KillAtEpoch2()])
    assert validation_curve(run_dir) == []  # epoch 1 was not validated
    assert torch.load(run_dir / "lightning" / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    res = train(load_config("tiny", over), run_dir=run_dir, resume=True)
    assert [e for e, _ in validation_curve(run_dir)] == [2]
    assert read_checkpoint_meta(res.checkpoint_dir)["training"]["epochs_completed"] == 3
    assert 0.0 <= res.val_metrics["bacc"] <= 1.0  # the final pass of the kept (last) weights


def test_sparse_validation_refuses_what_reads_the_validation() -> None:
    with pytest.raises(ConfigError, match=r"val_every_n_epochs=3 needs train\.keep=last.*keep='best'"):
        load_config("tiny", ["train.val_every_n_epochs=3", "train.keep=best"])
    with pytest.raises(ConfigError, match=r"early_stopping_patience=4"):
        load_config("tiny", ["train.val_every_n_epochs=3", "train.keep=last", "train.early_stopping_patience=4"])
    assert load_config("tiny", ["train.val_every_n_epochs=3", "train.keep=last"]).train.val_every_n_epochs == 3


def test_time_cap_is_forecast_after_the_first_epoch_and_recorded(tmp_path, caplog) -> None:
    """A capped training warns, after its first epoch, when that pace will not fit its epochs into the
    cap, and its checkpoint says the cap stopped it (and how many epochs were planned)."""
    import logging
    import time
    from types import SimpleNamespace

    from skinlesion.train.run import _wall_clock

    now = time.time()
    trainer = SimpleNamespace(current_epoch=0, max_epochs=20)
    clock = _wall_clock(now - 29.0, cap_minutes=2.0)  # ~29 s into the process, one ~30-s epoch done
    clock._epoch_start = now - 30.0
    with caplog.at_level(logging.WARNING, logger="skinlesion.train.run"):
        clock.on_train_epoch_end(trainer, None)
    assert clock.forecast["epochs_in_cap"] == 4 and clock.forecast["minutes_needed"] == pytest.approx(10.0, abs=0.1)
    assert "20 epochs need ~10 min: the 2-min cap (train.max_time_minutes) will stop this training after about 4" in caplog.text
    roomy = _wall_clock(now - 30.0, cap_minutes=20.0)
    roomy._epoch_start = now - 30.0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skinlesion.train.run"):
        roomy.on_train_epoch_end(trainer, None)
    assert roomy.forecast["epochs_in_cap"] == 20 and "cap" not in caplog.text

    cut = train(load_config("tiny", [f"data.root={tmp_path / 'syn'}", "train.epochs=3", "train.max_time_minutes=0.0001"]),
                run_dir=tmp_path / "cut")
    training = read_checkpoint_meta(cut.checkpoint_dir)["training"]
    assert training["stopped_at_time_cap"] is True and training["epochs_planned"] == 3
    assert training["epochs_completed"] < 3
