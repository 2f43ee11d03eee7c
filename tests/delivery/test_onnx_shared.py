"""Shared-weight ONNX graphs (``export onnx --share-weights``, what the default bundle ships): the
files hold none of the members' tensors, the engine fills them in from the loaded members, the
answers match PyTorch (metadata given, missing and mixed), INT8 graphs still hold their own
weights, and a graph whose tensors the member does not have is refused by name.

One export (fp32 shared + int8) of a copy of the calibrated fusion bundle is shared by the module:
member ``m0`` takes age, sex and site, ``m1`` the image only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.engine import Predictor, TorchEngine
from skinlesion.delivery.onnx_export import export_bundle_onnx
from skinlesion.delivery.onnx_runtime import WEIGHTS_KEY, OnnxEngine, OnnxError, graph_with_weights, read_manifest
from skinlesion.ensemble.bundle import Bundle, load_bundle
from skinlesion.evaluation import load_bundle_split
from skinlesion.records.metadata import normalise_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PARITY = 1e-4  # as tests/delivery/test_onnx.py


@pytest.fixture(scope="module")
def shared(calibrated_fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    dst = tmp_path_factory.mktemp("onnx-shared") / "bundle"
    shutil.copytree(calibrated_fusion_bundle, dst)
    bundle = load_bundle(dst)
    table = load_bundle_split(bundle, "val")
    export_bundle_onnx(
        bundle, int8=True, calibration_images=[table.load_image(i) for i in range(8)], n_parity=4, share_weights=True
    )
    return bundle


def _graph(path: Path):  # noqa: ANN202
    import onnx

    return onnx.load(str(path))


def test_fp32_files_hold_none_of_the_members_tensors(shared: Bundle) -> None:
    d = shared.path / "onnx"
    m = read_manifest(d)
    assert "weights': 'member'" in m["graph"]
    for member, entry in zip(shared.members, m["members"], strict=True):
        assert entry["weights"] == "member"
        state = member.model.state_dict()
        param_bytes = sum(t.numel() * 4 for t in state.values() if t.is_floating_point())
        for g in entry["graphs"]:
            fp32, int8 = g["files"]["fp32"], g["files"]["int8"]
            assert fp32["weights"] == "member" and "weights" not in int8  # INT8 graphs hold their own
            proto = _graph(d / fp32["file"])
            listed = json.loads({p.key: p.value for p in proto.metadata_props}[WEIGHTS_KEY])
            inits = {i.name for i in proto.graph.initializer}
            assert listed and not inits & set(listed) and set(listed) <= set(state)
            assert all(list(state[k].shape) == shape for k, shape in listed.items())
            # batch norms stay unfolded: their running statistics are among the listed tensors
            assert any(k.endswith("running_var") for k in listed)
            assert fp32["bytes"] < 0.2 * param_bytes < int8["bytes"] * 2


@pytest.mark.parametrize("case", ["given", "missing", "mixed"])
def test_shared_graphs_match_torch_after_post_processing(shared: Bundle, case: str) -> None:
    images = [generate_lesion(c, seed=i, size=(60, 80), hair=False, vignette=False)[0] for i, c in enumerate(["MEL", "NV", "BCC", "BKL"])]
    meta = {
        "given": [{"age": 80, "sex": "male", "site": "back"}] * 4,
        "missing": None,
        "mixed": [{"age": 5, "sex": "female", "site": "face"}, None, {"age": 60, "sex": "male", "site": "back"}, None],
    }[case]
    records = normalise_records(meta, 4)
    z_onnx = OnnxEngine(shared).view_logits(images, metadata=records)
    z_torch = TorchEngine(shared, "cpu").view_logits(images, metadata=records)
    given = shared.metadata_given(records, 4)
    p_onnx = shared.predict_from_logits(z_onnx, metadata_given=given)
    p_torch = shared.predict_from_logits(z_torch, metadata_given=given)
    assert np.abs(p_onnx.probs - p_torch.probs).max() < PARITY
    np.testing.assert_array_equal(p_onnx.decision, p_torch.decision)


def test_auto_engine_runs_the_shared_graphs(shared: Bundle) -> None:
    p = Predictor(shared, mc_samples=0)
    assert p.engine_name == "onnx-fp32" and "matches the bundle" in p.engine_choice
    image = generate_lesion("MEL", seed=5, size=(60, 80))[0]
    (rec,) = p.predict([image], metadata=[{"age": 70, "sex": "male", "site": "back"}])
    (ref,) = Predictor(shared, "torch", mc_samples=0, device="cpu").predict([image], metadata=[{"age": 70, "sex": "male", "site": "back"}])
    assert rec["prediction"]["decision"] == ref["prediction"]["decision"]
    got, want = rec["prediction"]["probabilities"], ref["prediction"]["probabilities"]
    assert max(abs(got[c] - want[c]) for c in got) < PARITY


def test_int8_from_shared_graphs_runs(shared: Bundle) -> None:
    images = [generate_lesion("NV", seed=i, size=(60, 80))[0] for i in range(3)]
    z8 = OnnxEngine(shared, precision="int8").view_logits(images)
    z32 = OnnxEngine(shared).view_logits(images)
    diff = np.abs(np.exp(shared.log_probs(z8, calibrated=False)) - np.exp(shared.log_probs(z32, calibrated=False)))
    assert 0 < diff.max() < 0.1


def test_a_tensor_the_member_lacks_is_refused_by_name(shared: Bundle) -> None:
    d = shared.path / "onnx"
    entry = read_manifest(d)["members"][0]
    path = d / entry["graphs"][0]["files"]["fp32"]["file"]
    state = dict(shared.members[0].model.state_dict())
    name = next(k for k in state if k.endswith("running_var"))
    missing = {k: v for k, v in state.items() if k != name}
    with pytest.raises(OnnxError, match=rf"{path.name}.*{name}.*missing"):
        graph_with_weights(_graph(path), missing, str(path))
    state[name] = state[name][:1]
    with pytest.raises(OnnxError, match=rf"{name}.*shape \[1\]"):
        graph_with_weights(_graph(path), state, str(path))
    # a graph without the key (a self-contained export) is returned unchanged
    proto = _graph(path)
    del proto.metadata_props[:]
    assert graph_with_weights(proto, {}, str(path)) is proto
