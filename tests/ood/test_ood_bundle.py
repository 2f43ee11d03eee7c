"""fit_ood_gate and bench/ood.py on the tiny session bundle (trained on synthetic lesions): plumbing, not results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skinlesion.ensemble.bundle import load_bundle
from skinlesion.evaluation import load_bundle_split
from skinlesion.ensemble.triage import fit_ood_gate
from skinlesion.ood import OODGate, table_features

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def test_fit_ood_gate_on_a_bundle_gates_the_requested_fraction_of_validation(tiny_bundle: Path, tmp_path: Path) -> None:
    gate = fit_ood_gate(tiny_bundle, score="knn", params={"k": 2}, quantile=0.8, max_train_images=30)
    bundle = load_bundle(tiny_bundle)
    assert gate.members_ == [m.name for m in bundle.members] and gate.n_train_ == 30
    assert gate.provenance_["split_hash"] == bundle.meta["provenance"]["split_hash"]
    val = table_features(bundle.members, load_bundle_split(bundle, "val"))
    assert np.mean(gate.predict(val)) <= 0.2 + 1e-12
    again = OODGate.load(gate.save(tmp_path), tmp_path)
    np.testing.assert_array_equal(again.predict(val), gate.predict(val))


def test_bench_prints_one_json_object(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import ood as module

    argv = ["--bundle", str(tiny_bundle), "--max-train-images", "60", "--max-test-images", "10", "--n-distorted", "3", "--n", "7"]
    assert module.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["candidates"]) == set(module.CANDIDATES)
    assert set(res["candidates"]["knn_k1"]["detection"]) == set(res["sets"])
    assert res["chosen"]["name"] in res["chosen"]["eligible"] or res["chosen"]["name"] is None
    assert set(res["without_gate"]) == set(res["sets"])
