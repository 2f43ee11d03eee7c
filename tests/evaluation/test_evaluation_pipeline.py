"""The one evaluation path (skinlesion.evaluation.pipeline, .split): a checkpoint goes through it as a
one-member bundle and keeps the single model's files and numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion.data.splits import make_split, write_manifest
from skinlesion.ensemble.bundle import bundle_from_checkpoint, load_bundle
from skinlesion.evaluation import (
    BUNDLE, bundle_split, calibration_change, data_config_from_meta, evaluate_checkpoint, evaluate_split,
)
from skinlesion.evaluation.pipeline import predict_split
from skinlesion.inference import predict_table
from skinlesion.metrics.calibration import expected_calibration_error
from skinlesion.train.data import load_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_checkpoint_keeps_its_files_and_its_model_softmax(tiny_members: list[Path], tmp_path: Path) -> None:
    res = evaluate_checkpoint(tiny_members[0], split="test", out_dir=tmp_path / "ev", n_boot=5)
    out = Path(res["out_dir"])
    assert sorted(p.name for p in out.iterdir()) == ["ground_truth.csv", "metrics.json", "predictions.csv", "report.html"]
    assert list(json.loads((out / "metrics.json").read_text())) == ["metrics", "intervals", "calibration", "provenance"]
    assert {"ece", "nll", "brier", "reliability"} <= res["calibration"].keys()
    assert res["provenance"]["checkpoint"] == str(tiny_members[0]) and res["provenance"]["same_split_as_training"]
    # the probabilities are the model's float32 softmax, as the checkpoint path always wrote them
    single = bundle_from_checkpoint(tiny_members[0])
    table = bundle_split(single, "test").table
    member = single.members[0]
    expected = predict_table(member.model, table, member.preprocessing)
    written = pd.read_csv(out / "predictions.csv").drop(columns="image").to_numpy()
    np.testing.assert_allclose(written, expected, atol=1e-6)  # the CSV rounds
    sp = predict_split(single, "test", softmax=True)
    np.testing.assert_array_equal(sp.probs, expected)
    assert sp.probs.argmax(1).tolist() == sp.prediction.decision.tolist()  # an uncalibrated bundle decides by argmax


def test_the_model_softmax_is_only_for_a_checkpoint(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(ValueError, match="one-member bundle without TTA or temperature"):
        predict_split(bundle, "val", softmax=True)
    with pytest.raises(ValueError, match="The 'split' parameter must be one of"):
        evaluate_split(bundle, BUNDLE, split="holdout")


def test_calibration_change_is_that_of_the_bundles_probabilities(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    sp = predict_split(bundle, "val")
    c = calibration_change(sp.y, bundle, sp.view_logits)
    assert c["ece_after"] == expected_calibration_error(sp.y, sp.prediction.probs)
    assert c["ece_before"] == expected_calibration_error(sp.y, np.exp(bundle.log_probs(sp.view_logits, calibrated=False)))
    assert c["temperature"] == bundle.temperatures_for("with_metadata") and c["temperature"]["mode"] == "ensemble"


def test_an_explicit_manifest_of_another_split_is_recorded(tiny_members: list[Path], tmp_path: Path) -> None:
    single = bundle_from_checkpoint(tiny_members[0])
    meta = single.members[0].meta
    table = load_table(data_config_from_meta(meta, None), tiny_members[0].parent)
    other = tmp_path / "other.csv"
    write_manifest(make_split(table, val_fraction=0.3, test_fraction=0.3, seed=7), other)
    rows = bundle_split(single, "test", manifest=other)
    assert not rows.same_split and rows.manifest == other and rows.info["hash"] != meta["data"]["split_hash"]
    res = evaluate_checkpoint(tiny_members[0], split="test", manifest=other, out_dir=tmp_path / "ev", n_boot=0)
    assert res["provenance"]["same_split_as_training"] is False and res["provenance"]["manifest"] == str(other)
    assert res["provenance"]["n_images"] == len(rows.table)
