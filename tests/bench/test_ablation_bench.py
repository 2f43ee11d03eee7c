"""bench/ablation.py on a tiny recipe: the reference member and a variant of it are trained by the
recipe's step, reported side by side, written for the model card, and not trained again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench import ablation
from skinlesion.model_card import _ablation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict | None, str]:
    rc = ablation.main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


@pytest.fixture(scope="module")
def recipe(tiny_members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = {
        "name": "abl",
        "description": "tiny",
        "data_root": str(tiny_members[0].parents[1] / "synthetic"),
        "members": [{"name": "a", "preset": "tiny", "set": ["model.input_size=[48, 64]", "train.epochs=1", "seed=1"]}],
        "calibrate": {"targets": "MEL:sens=0.6,spec=0.5"},
    }
    p = tmp_path_factory.mktemp("ablation") / "r.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_reference_and_variant_side_by_side(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["--recipe", str(recipe), "--recipe-out", str(out), "--define", "small", "model.input_size=[40,56]", "--variants", "small",
            "--n-boot", "50"]
    rc, res, err = _run(argv, capsys)
    assert rc == 0, err
    ref, small = res["models"]["reference"], res["models"]["small"]
    ref_meta = json.loads((out / "members" / "a" / "checkpoint" / "checkpoint.json").read_text())  # where the recipe trains it
    assert ref["val_bacc"] == ref_meta["validation"]["bacc"] and ref["input_size"] == [48, 64]
    assert small["input_size"] == [40, 56] and small["overrides"][-1] == "model.input_size=[40,56]"
    assert small["change_vs_reference"] == pytest.approx(small["val_bacc"] - ref["val_bacc"], abs=1e-4)
    # the models predict validation again: the training's number comes back, and the change gets a paired interval
    assert ref["val_bacc_recomputed"] == pytest.approx(ref["val_bacc"], abs=1e-3)
    assert small["val_bacc_recomputed"] == pytest.approx(small["val_bacc"], abs=1e-3)
    low, high = small["change_ci95"]
    assert low <= small["val_bacc_recomputed"] - ref["val_bacc_recomputed"] <= high
    assert "change_ci95" not in ref
    assert small["epochs_completed"] == 1 and len(small["val_bacc_by_epoch"]) == 1 and small["train_images_per_s"] > 0
    assert json.loads((out / "ablation" / "ablation.json").read_text()) == res

    weights = out / "ablation" / "members" / "small" / "checkpoint" / "weights.safetensors"
    stamp = weights.stat().st_mtime_ns
    rc, again, _ = _run(argv, capsys)  # finished trainings are reused, not repeated
    assert rc == 0 and weights.stat().st_mtime_ns == stamp and again["models"] == res["models"]

    lines: list[str] = []
    _ablation(lines.append, out)
    row = next(line for line in lines if line.startswith("| small |"))
    assert "| 40x56 |" in row and f"{small['val_bacc']:.3f}" in row and f"{small['change_vs_reference']:+.3f} [{low:.3f}, {high:.3f}]" in row


def test_report_only_lists_unfinished_and_bad_names_are_refused(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, res, _ = _run(["--recipe", str(recipe), "--recipe-out", str(tmp_path), "--report-only", "--variants", "aug-light"], capsys)
    assert rc == 0 and res["not_finished"] == ["reference", "aug-light"] and not (tmp_path / "members").exists()
    rc, _, err = _run(["--recipe", str(recipe), "--recipe-out", str(tmp_path), "--variants", "nope"], capsys)
    assert rc == 2 and "nope" in err and "res96x128" in err
    rc, _, err = _run(["--recipe", str(recipe), "--recipe-out", str(tmp_path), "--member", "zz"], capsys)
    assert rc == 2 and "'zz'" in err and "['a']" in err
