"""``split_command`` through typer's CliRunner on a small app (the real app composes it the same way)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.data_split import split_command

app = typer.Typer()
app.command("split")(split_command)
app.command("noop")(lambda: None)  # two commands, so "split" is addressed by name as in the real app


@pytest.fixture
def ham_root(tmp_path: Path) -> Path:
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    lines = ["lesion_id,image_id,dx"]
    k = 0
    for dx in ("mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"):
        for lesion in range(5):
            for _ in range(1 + lesion % 2):
                lines.append(f"HAM_{dx}_{lesion},ISIC_{k:04d},{dx}")
                Image.new("RGB", (4, 3), (k % 256, 0, 0)).save(root / "images" / f"ISIC_{k:04d}.jpg")
                k += 1
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_split_writes_manifest_and_reports(ham_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "m.csv"
    res = CliRunner().invoke(app, ["split", "--root", str(ham_root), "--out", str(out), "--seed", "3"])
    assert res.exit_code == 0, res.output
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["hash"] in res.output and info["seed"] == 3
    assert "Grouped by lesion: yes (lesion_id, 35 groups)" in res.output
    df = pd.read_csv(out)
    assert len(df) == 49 and (df.groupby("lesion_id")["split"].nunique() == 1).all()
    for cls in ("MEL", "VASC", "all"):
        assert cls in res.output


def test_split_kfold(ham_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "k.csv"
    res = CliRunner().invoke(
        app, ["split", "--root", str(ham_root), "--out", str(out), "--kfold", "2", "--test", "0.2"]
    )
    assert res.exit_code == 0, res.output
    assert "2 folds of the training part" in res.output
    assert set(pd.read_csv(out)["fold"]) == {-1, 0, 1}


def test_split_errors_exit_1_with_message(ham_root: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["split", "--root", str(ham_root), "--val", "0.9", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 1 and "val_fraction + test_fraction must be < 1" in res.output
    res = CliRunner().invoke(app, ["split", "--format", "isic2019", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 1 and "No ground-truth CSV given: pass ground_truth_csv (--gt)" in res.output
    (ham_root / "images" / "ISIC_0000.jpg").unlink()
    res = CliRunner().invoke(app, ["split", "--root", str(ham_root), "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 1 and "image_id 'ISIC_0000': image file not found" in res.output
    res = CliRunner().invoke(app, ["split", "--root", str(ham_root), "--skip-bad", "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0 and "Left out 1 bad row(s) (--skip-bad)" in res.output
    res = CliRunner().invoke(app, ["split", "--root", str(ham_root), "--gt", "x.csv"])
    assert res.exit_code == 2 and "--gt applies to isic2018/isic2019" in res.output
