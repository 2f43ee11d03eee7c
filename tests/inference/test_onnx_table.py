"""Table passes in ONNX Runtime (:mod:`skinlesion.inference.onnx_graph`): the same logits as PyTorch
for an image-only and a metadata fusion member (metadata given, hidden, and both from one pass), over
views of both input shapes and batches that do not fill the graph's rows; which engine ``auto``
picks; and what happens when a graph cannot be exported or does not compute what the model does."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import skinlesion.inference.onnx_graph as onnx_graph
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.evaluation import load_bundle_split
from skinlesion.inference.onnx_graph import ENGINE_ENV, OnnxGraphError, OrtForward, table_engine
from skinlesion.inference.table import table_view_logits, table_view_logits_with_hidden

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PARITY = 1e-4  # as the bundle export's tests
VIEWS = ("identity", "hflip", "rot90")  # rot90 swaps the axes of the non-square members: two graphs
KW = {"batch_size": 5, "max_rows": 8}  # 5 images x 1 view per call: 8-row graphs run padded


@pytest.fixture(scope="module")
def fusion_case(fusion_bundle: Path) -> tuple:
    bundle = load_bundle(fusion_bundle)
    table = load_bundle_split(bundle, "val")
    table = table.subset(table.frame["image_id"].tolist()[:12])  # 12 rows: batches of 5, 5 and 2
    return bundle.members[0], bundle.members[1], table


def _both(member, table, hidden: bool, engine: str) -> tuple[np.ndarray, ...]:
    if hidden:
        return table_view_logits_with_hidden(member.model, table, member.preprocessing, VIEWS, engine=engine, **KW)
    return (table_view_logits(member.model, table, member.preprocessing, VIEWS, engine=engine, **KW),)


def test_onnx_table_pass_gives_pytorchs_logits_with_the_metadata_given_and_hidden(fusion_case: tuple) -> None:
    fusion, _, table = fusion_case
    assert fusion.preprocessing["input_size"][0] != fusion.preprocessing["input_size"][1]  # rot90: two graphs
    given, hidden = _both(fusion, table, True, "onnx")  # one pass: the head runs again on the graph's features
    ref_given, ref_hidden = _both(fusion, table, True, "torch")
    assert given.shape == ref_given.shape == (12, len(VIEWS), len(table.classes))
    np.testing.assert_allclose(given, ref_given, atol=PARITY)
    np.testing.assert_allclose(hidden, ref_hidden, atol=PARITY)
    assert np.abs(ref_given - ref_hidden).max() > 10 * PARITY  # the metadata moves this member's logits
    missing = table_view_logits(fusion.model, table, fusion.preprocessing, VIEWS[:1], engine="onnx", use_metadata=False, **KW)
    np.testing.assert_allclose(missing, ref_hidden[:, :1], atol=PARITY)


def test_onnx_table_pass_of_an_image_only_member(fusion_case: tuple) -> None:
    _, member, table = fusion_case
    given, hidden = _both(member, table, True, "onnx")  # metadata hidden changes nothing: the same logits twice
    np.testing.assert_allclose(given, _both(member, table, False, "torch")[0], atol=PARITY)
    np.testing.assert_array_equal(given, hidden)


def test_ort_forward_pads_and_splits_calls_to_its_rows(fusion_case: tuple) -> None:
    fusion, _, _ = fusion_case
    model = fusion.model.eval()
    forward = OrtForward(model, rows=4)
    x = torch.randn(9, 3, *fusion.preprocessing["input_size"])  # 4 + 4 + 1 (padded) rows
    meta = model.encode_metadata([{"age": 70, "sex": "male", "site": "back"}] * 9, 9)
    logits, features = forward(x, meta)
    with torch.no_grad():
        ref_logits, ref_features = onnx_graph.logits_and_image_features(model, x, meta)
    assert logits.shape == (9, ref_logits.shape[1]) and features.shape == ref_features.shape
    np.testing.assert_allclose(logits.numpy(), ref_logits.numpy(), atol=PARITY)
    np.testing.assert_allclose(features.numpy(), ref_features.numpy(), atol=PARITY)
    with pytest.raises(ValueError, match="'rows'"):
        OrtForward(model, rows=0)


def test_auto_picks_onnx_runtime_for_long_cpu_passes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    n = onnx_graph.AUTO_MIN_PASSES
    assert table_engine(None, cpu, n) == "onnx" and table_engine(None, cpu, n - 1) == "torch"
    assert table_engine("auto", gpu, 10 * n) == "torch"
    assert table_engine("torch", cpu, 10 * n) == "torch" and table_engine("onnx", cpu, 1) == "onnx"
    monkeypatch.setenv(ENGINE_ENV, "torch")
    assert table_engine(None, cpu, 10 * n) == "torch" and table_engine("onnx", cpu, 1) == "onnx"  # the argument wins
    monkeypatch.setenv(ENGINE_ENV, "tensorrt")
    with pytest.raises(ValueError, match=f"{ENGINE_ENV} must be one of"):
        table_engine(None, cpu, 1)
    with pytest.raises(ValueError, match="'engine' parameter"):
        table_engine("fast", cpu, 1)
    with pytest.raises(ValueError, match="runs on the CPU"):
        table_engine("onnx", gpu, 1)


def test_a_graph_that_disagrees_with_the_model_is_refused_or_replaced_by_pytorch(
    fusion_case: tuple, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, member, table = fusion_case
    export = onnx_graph.onnx_program

    def shifted(model: torch.nn.Module, *a: object, **k: object) -> object:  # a graph whose logits are off by 0.5
        other = copy.deepcopy(model)
        with torch.no_grad():
            other.get_classifier().bias += 0.5
        return export(other, *a, **k)

    monkeypatch.setattr(onnx_graph, "onnx_program", shifted)
    with pytest.raises(OnnxGraphError, match=r"up to 0\.5 away from PyTorch"):
        _both(member, table, False, "onnx")
    monkeypatch.setattr(onnx_graph, "AUTO_MIN_PASSES", 1)
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="skinlesion.inference.table"):
        (auto,) = _both(member, table, False, "auto")
    assert "runs in PyTorch instead" in caplog.text
    np.testing.assert_array_equal(auto, _both(member, table, False, "torch")[0])


def test_a_model_the_exporter_cannot_take_is_named(fusion_case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    _, member, table = fusion_case

    def fail(*a: object, **k: object) -> None:
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(onnx_graph, "onnx_program", fail)
    with pytest.raises(OnnxGraphError, match=r"could not be exported to ONNX for inputs of size .*frobnicate"):
        _both(member, table, False, "onnx")
    monkeypatch.setenv(ENGINE_ENV, "onnx")  # asked for by the environment: an error too, not a fallback
    with pytest.raises(OnnxGraphError):
        _both(member, table, False, None)  # type: ignore[arg-type]
