"""Faithfulness of ensemble CAMs over a split (skinlesion.explain.faithfulness_split) on a two-member tiny bundle.

The synthetic lesions are written with their true masks, so ``mask_source="auto"`` must pick the
masks (``truth``) and the lesion area fractions can be checked against the mask files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.explain_eval import faithfulness_command
from skinlesion.data.table import LesionTable
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.errors import DataError
from skinlesion.evaluation import load_bundle_split
from skinlesion.explain.faithfulness_split import (
    ensemble_predict_fn,
    faithfulness_over_split,
    sample_one_per_lesion,
)

FAST = {"steps": 4, "n_random": 2, "n_boot": 50}
SUMMARY_KEYS = {"mean", "reference", "difference", "ci_low", "ci_high", "p_value", "n"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def bundle_dir(tiny_bundle: Path) -> Path:
    """The session's tiny bundle (two members, synthetic lesions with true masks); copy before changing it."""
    return tiny_bundle


def test_sampling_is_one_image_per_lesion_and_stratified() -> None:
    # 3 classes: A has 6 lesions of 2 images, B 3 lesions, C 1 lesion
    rows = [("A", f"a{i}") for i in range(6) for _ in range(2)] + [("B", f"b{i}") for i in range(3)] + [("C", "c0")]
    frame = pd.DataFrame({
        "image_id": [f"im{i}" for i in range(len(rows))],
        "lesion_id": [lesion for _, lesion in rows],
        "label": [label for label, _ in rows],
        "path": [pd.NA] * len(rows),
    })
    table = LesionTable(frame, ("A", "B", "C"), "test", "lesion_id")
    picked = sample_one_per_lesion(table, 5, seed=1)
    f = table.frame.iloc[picked]
    assert f["lesion_id"].is_unique and len(f) == 5
    assert f["label"].value_counts().to_dict() == {"A": 3, "B": 1, "C": 1}  # 5 * (6, 3, 1) / 10, C at least 1
    np.testing.assert_array_equal(picked, sample_one_per_lesion(table, 5, seed=1))
    every = table.frame.iloc[sample_one_per_lesion(table, None)]
    assert len(every) == 10 and every["lesion_id"].is_unique
    with pytest.raises(ValueError, match="The 'n' parameter must be a positive integer. Got 0 instead."):
        sample_one_per_lesion(table, 0)


def test_predict_fn_is_the_bundle_on_original_images(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    table = load_bundle_split(bundle, "test")
    images = [table.load_image(i) for i in range(3)]
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    probs = ensemble_predict_fn(bundle, batch_size=2)(batch)
    pred = bundle.predict_images(images)  # all TTA views; the predict_fn uses the identity view only
    identity = np.exp(bundle.log_probs(pred.member_view_logits, views=[bundle.tta.views.index("identity")]))
    np.testing.assert_allclose(probs, identity, atol=1e-5)


def test_faithfulness_over_split_uses_true_masks(bundle_dir: Path) -> None:
    res = faithfulness_over_split(bundle_dir, split="test", n=4, seed=0, **FAST)
    assert res["n"] == 4 and res["n_lesions"] == 4
    assert sum(res["class_counts"].values()) == 4 and len(res["class_counts"]) == 4  # 4 classes of ~equal size
    assert res["mask_source"] == {"requested": "auto", "used": {"truth": 4}}
    assert set(res["summary"]) == {"deletion", "insertion", "mass_in_mask"}
    for name, row in res["summary"].items():
        assert set(row) == SUMMARY_KEYS
        assert row["n"] == 4 and all(math.isfinite(row[k]) for k in ("mean", "reference", "difference", "ci_low"))
        assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    root = bundle_dir.parent / "synthetic"
    for r in res["records"]:
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1 and 0 <= r["mass_in_mask"] <= 1
        mask = np.asarray(Image.open(root / "masks" / f"{r['image_id']}_segmentation.png")) > 127
        assert r["mask_fraction"] == pytest.approx(mask.mean())
    assert res["settings"]["steps"] == 4 and res["seconds"] > 0
    again = faithfulness_over_split(load_bundle(bundle_dir), split="test", n=4, seed=0, **FAST)
    assert [r["image_id"] for r in again["records"]] == [r["image_id"] for r in res["records"]]
    assert again["summary"]["deletion"]["mean"] == pytest.approx(res["summary"]["deletion"]["mean"])


def test_bbox_masks_come_from_the_reference_boxes(bundle_dir: Path) -> None:
    res = faithfulness_over_split(bundle_dir, n=3, mask_source="bbox", seed=2, **FAST)
    assert res["mask_source"]["used"] == {"bbox": 3}
    truth = pd.read_csv(bundle_dir.parent / "synthetic" / "synthetic_truth.csv").set_index("image_id")
    for r in res["records"]:
        b = truth.loc[r["image_id"]]  # inclusive bounds in synthetic_truth.csv
        area = (b["bottom"] - b["top"] + 1) * (b["right"] - b["left"] + 1)
        assert r["mask_fraction"] == pytest.approx(area / (150 * 200))


def test_missing_true_masks_are_an_error(bundle_dir: Path) -> None:
    masks = bundle_dir.parent / "synthetic" / "masks"
    hidden = masks.with_name("masks-hidden")
    masks.rename(hidden)
    try:
        with pytest.raises(DataError, match="No image of the sample has a 'truth' lesion mask"):
            faithfulness_over_split(bundle_dir, n=2, mask_source="truth", **FAST)
    finally:
        hidden.rename(masks)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, "The 'split' parameter must be one of"),
        ({"mask_source": "manual"}, "The 'mask_source' parameter must be one of"),
        ({"method": "lime"}, "The 'method' parameter must be one of"),
        ({"random_kind": "noise"}, "The 'random_kind' parameter must be one of"),
        ({"steps": 0}, "The 'steps' parameter must be a positive integer. Got 0 instead."),
    ],
)
def test_bad_parameters_are_named(bundle_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faithfulness_over_split(bundle_dir, n=2, **kwargs)


def test_cli_prints_a_summary_and_writes_json(bundle_dir: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(faithfulness_command)
    out = tmp_path / "faith.json"
    args = ["--bundle", str(bundle_dir), "--n", "2", "--steps", "3", "--n-random", "1", "--n-boot", "20", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "deletion AUC" in r.output and "insertion AUC" in r.output and "lesion masks: truth 2" in r.output
    saved = json.loads(out.read_text())
    assert saved["n"] == 2 and len(saved["records"]) == 2
    r = CliRunner().invoke(app, ["--bundle", str(bundle_dir), "--split", "nope"])
    assert r.exit_code == 1 and "The 'split' parameter must be one of" in r.output
    r = CliRunner().invoke(app, ["--n", "2"])
    assert r.exit_code == 1 and "Give exactly one of --bundle or --checkpoint" in r.output


def test_a_checkpoint_works_as_a_one_member_bundle(bundle_dir: Path) -> None:
    from skinlesion.ensemble.bundle import bundle_from_checkpoint

    ckpt = bundle_dir.parent / "a" / "checkpoint"
    single = bundle_from_checkpoint(ckpt)
    assert len(load_bundle_split(single, "test")) == len(load_bundle_split(load_bundle(bundle_dir), "test"))
    res = faithfulness_over_split(single, n=2, **FAST)
    assert res["n"] == 2 and res["bundle"].startswith("checkpoint:")
