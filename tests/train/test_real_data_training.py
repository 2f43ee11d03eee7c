"""The training pipeline on a small sample of the real HAM10000 images (lesion-disjoint split)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from skinlesion.train.config import load_config
from skinlesion.train.run import train


@pytest.mark.realdata
def test_tiny_training_on_real_ham10000_sample(ham10000_root: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "tiny",
        [
            "data.format=ham10000",
            f"data.root={ham10000_root}",
            "data.max_train_images=64",
            "train.limit_val_batches=2",
            "train.batch_size=16",
        ],
    )
    res = train(cfg, run_dir=tmp_path / "run")
    meta = json.loads((res.checkpoint_dir / "checkpoint.json").read_text())
    assert meta["data"]["grouped_by_lesion"] is True
    assert meta["data"]["n_train"] == pytest.approx(64, abs=4)
    assert meta["classes"] == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    manifest = pd.read_csv(tmp_path / "run" / "split_manifest.csv")
    assert len(manifest) == 8511
    assert manifest.groupby("lesion_id")["split"].nunique().max() == 1  # no lesion on two sides
    assert meta["validation"]["n"] == (manifest["split"] == "val").sum()
