"""ONNX export and ONNX Runtime inference: parity with PyTorch after the bundle's full
post-processing, the manifest, every refusal, INT8, the Predictor and the CLI.

One export (fp32 + int8) of the tiny two-member bundle with D4 views is shared by the module:
member ``a`` is 48x64 (non-square: a second graph for 64x48 serves the axis-swapping views),
member ``b`` is 56x56.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.delivery import onnx_export
from skinlesion.delivery.engine import Predictor, TorchEngine, make_engine
from skinlesion.delivery.onnx_export import export_bundle_onnx
from skinlesion.delivery.onnx_runtime import MANIFEST, OnnxEngine, OnnxError, graph_shapes, read_manifest
from skinlesion.ensemble.bundle import Bundle, bundle_from_checkpoint, load_bundle, write_meta
from skinlesion.evaluation import load_bundle_split
from skinlesion.inference.tta import D4_VIEWS
from skinlesion.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
PARITY = 1e-4  # the bound on probabilities (observed: ~1e-7 on these tiny members)
N_CAL = 16  # calibration images given explicitly (the tiny validation split has 22)


def _split_images(bundle: Bundle, split: str, n: int) -> list[np.ndarray]:
    table = load_bundle_split(bundle, split)
    return [table.load_image(i) for i in range(min(n, len(table)))]


@pytest.fixture(scope="module")
def d4_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with D4 views (the copy is exported into, so the shared one stays clean)."""
    dst = tmp_path_factory.mktemp("onnx") / "bundle"
    shutil.copytree(tiny_bundle, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    meta["tta"]["views"] = list(D4_VIEWS)
    write_meta(dst, meta)
    return dst


@pytest.fixture(scope="module")
def exported(d4_dir: Path) -> Bundle:
    bundle = load_bundle(d4_dir)
    export_bundle_onnx(bundle, int8=True, calibration_images=_split_images(bundle, "val", N_CAL), n_parity=4)
    return bundle


@pytest.fixture(scope="module")
def test_images(exported: Bundle) -> list[np.ndarray]:
    images = _split_images(exported, "test", 24)
    images[1] = np.random.default_rng(0).integers(0, 256, size=(90, 70, 3), dtype=np.uint8)  # another size and aspect
    return images


@pytest.fixture(scope="module")
def fp32_engine(exported: Bundle) -> OnnxEngine:
    return OnnxEngine(exported)


@pytest.mark.parametrize("n", [1, 5])
def test_probabilities_match_pytorch_after_post_processing(exported: Bundle, fp32_engine: OnnxEngine, test_images: list, n: int) -> None:
    images = test_images[:n]
    z_onnx, z_torch = fp32_engine.view_logits(images), TorchEngine(exported, "cpu").view_logits(images)
    assert [z.shape for z in z_onnx] == [(n, 8, len(exported.classes))] * 2
    p_onnx, p_torch = exported.predict_from_logits(z_onnx), exported.predict_from_logits(z_torch)
    assert np.abs(p_onnx.probs - p_torch.probs).max() < PARITY
    np.testing.assert_array_equal(p_onnx.decision, p_torch.decision)
    # the non-square member needs two graphs (its swapped views), the square one a single graph
    assert [sorted(s) for s in fp32_engine.sessions] == [[(48, 64), (64, 48)], [(56, 56)]]


def test_members_run_side_by_side_with_the_same_results(exported: Bundle, fp32_engine: OnnxEngine, test_images: list) -> None:
    two = OnnxEngine(exported, threads=2)  # CPU: one thread per task, tasks in parallel
    one = OnnxEngine(exported, threads=1)
    assert two.member_workers == 2 and one.member_workers == 1 and one._pool is None
    from skinlesion.inference.tta import SWAPS_AXES

    # a task is one member's views of one input shape: the non-square member has two, the square one one
    views = list(exported.tta.views)
    swapped = [i for i, v in enumerate(views) if v in SWAPS_AXES]  # rot90, rot270, transpose, transverse
    same = [i for i in range(len(views)) if i not in swapped]
    assert two.tasks == [(0, same), (0, swapped), (1, list(range(len(views))))]
    names = [m.name for m in exported.members]
    z2s, f2 = two.view_logits_and_features(test_images[:5], features_of=names)
    z1s, f1 = one.view_logits_and_features(test_images[:5], features_of=names)
    assert list(f2) == list(f1) == names
    for i, (z2, z1) in enumerate(zip(z2s, z1s, strict=True)):
        np.testing.assert_allclose(z2, z1, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f2[names[i]], f1[names[i]], rtol=1e-5, atol=1e-5)
        # the assembled views are the member's own pass over all views, in the bundle's view order
        whole, feats = one.member_view_logits(i, test_images[:5], features=True)
        np.testing.assert_allclose(z2, whole, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f2[names[i]], feats[:, views.index("identity")], rtol=1e-5, atol=1e-5)


def _ended(threads: set[threading.Thread]) -> bool:
    for _ in range(200):
        if not any(t.is_alive() for t in threads):
            return True
        time.sleep(0.01)
    return not any(t.is_alive() for t in threads)


def test_member_threads_end_when_the_engine_is_closed_or_dropped(exported: Bundle, test_images: list) -> None:
    import gc

    engine = OnnxEngine(exported, threads=2)
    expected = engine.view_logits(test_images[:2])
    threads = set(engine._pool._threads)  # this engine's own pool (other engines may hold pools too)
    assert threads and all(t.is_alive() and t.name.startswith("onnx-member") for t in threads)
    engine.close()
    assert _ended(threads)
    for z, e in zip(engine.view_logits(test_images[:2]), expected, strict=True):  # still usable, members in turn
        np.testing.assert_allclose(z, e, rtol=1e-5, atol=1e-5)
    dropped = OnnxEngine(exported, threads=2)
    dropped.view_logits(test_images[:1])
    threads = set(dropped._pool._threads)
    assert threads and all(t.is_alive() for t in threads)
    del dropped
    gc.collect()
    assert _ended(threads)


def test_manifest_records_provenance_files_and_parity(exported: Bundle) -> None:
    from skinlesion._hashing import sha256_file

    d = exported.path / "onnx"
    m = read_manifest(d)
    assert m["format"] == "skinlesion-onnx" and m["bundle_id"] == exported.bundle_id
    assert m["precisions"] == ["fp32", "int8"] and m["opset"] == onnx_export.DEFAULT_OPSET
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime"} and m["tta_views"] == list(D4_VIEWS)
    assert "bundle.json" in m["graph"]  # pre/post-processing is declared to stay in the bundle
    assert m["quantisation"]["calibration_source"] == {"source": "given images", "n_images": N_CAL}
    assert [e["name"] for e in m["members"]] == [mb.name for mb in exported.members]
    a, b = m["members"]
    assert a["input_size"] == [48, 64] and [g["input_size"] for g in a["graphs"]] == [[48, 64], [64, 48]]
    assert a["graphs"][1]["views"] == ["rot90", "rot270", "transpose", "transverse"]
    assert b["input_size"] == [56, 56] and len(b["graphs"]) == 1 and len(b["graphs"][0]["views"]) == 8
    for e in m["members"]:
        assert e["precisions"] == ["fp32", "int8"] and e["opset"] == m["opset"]
        assert e["parity"]["fp32"]["max_abs_prob_diff"] < PARITY and e["parity"]["fp32"]["n_views"] == 8
        assert 0 <= e["parity"]["int8"]["max_abs_prob_diff"] <= 1
        for g in e["graphs"]:
            for rec in g["files"].values():
                assert rec["file"] in e["files"] and sha256_file(d / rec["file"]) == rec["sha256"]
    assert a["graphs"][0]["files"]["fp32"]["file"].endswith(".fp32.onnx")


def test_graphs_are_the_network_with_a_dynamic_batch(exported: Bundle) -> None:
    import onnx

    d = exported.path / "onnx"
    for e in read_manifest(d)["members"]:
        for g in e["graphs"]:
            model = onnx.load(str(d / g["files"]["fp32"]["file"]))
            onnx.checker.check_model(model)
            (inp,), (out, feat) = model.graph.input, model.graph.output
            dims = [x.dim_param or x.dim_value for x in inp.type.tensor_type.shape.dim]
            assert inp.name == "input" and out.name == "logits" and feat.name == "features"
            assert isinstance(dims[0], str) and dims[1:] == [3, *g["input_size"]]
            out_dims = [[x.dim_param or x.dim_value for x in t.type.tensor_type.shape.dim] for t in (out, feat)]
            assert out_dims[0][1] == len(exported.classes) and all(isinstance(d[0], str) for d in out_dims)
            q = onnx.load(str(d / g["files"]["int8"]["file"]))
            ops = {n.op_type for n in q.graph.node}
            assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_the_gate_reads_the_features_of_the_onnx_pass(exported: Bundle, test_images: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs output the pooled image features of the identity view: the predictor hands them to the
    out-of-distribution gate (no PyTorch pass), with the records of the torch engine."""
    from skinlesion.ensemble.triage import fit_ood_gate
    from skinlesion.ood import OODGate
    from skinlesion.ood import features as ood_features
    from skinlesion.records import gate_feature_members

    bundle, images = load_bundle(exported.path), test_images[:6]  # a fresh copy in memory: the gate is set on it
    gate = fit_ood_gate(bundle, score="knn", params={"k": 2}, quantile=0.8, max_train_images=30)
    bundle.meta.setdefault("decision", {})["ood"] = gate.to_dict()
    bundle.cache["ood_gate"] = gate
    names = [m.name for m in bundle.members]
    assert gate_feature_members(bundle) == names
    want = Predictor(bundle, "torch", mc_samples=0, device="cpu").predict(images)
    reference = ood_features.image_features(bundle.members, images, device="cpu")
    logits, features = OnnxEngine(bundle).view_logits_and_features(images, features_of=names[:1])
    assert list(features) == names[:1] and features[names[0]].shape == reference[0].features.shape
    np.testing.assert_allclose(features[names[0]], reference[0].features, atol=1e-4)
    assert all(np.array_equal(a, b) for a, b in zip(logits, OnnxEngine(bundle).view_logits(images), strict=True))

    calls: list[int] = []
    torch_pass = ood_features.image_features
    monkeypatch.setattr(ood_features, "image_features", lambda *a, **k: calls.append(1) or torch_pass(*a, **k))
    got = Predictor(bundle, "onnx", mc_samples=0).predict(images)
    assert calls == []  # the gate read the ONNX pass
    for g, w in zip(got, want, strict=True):
        assert g["ood"]["gated"] == w["ood"]["gated"] and g["ood"]["score"] == pytest.approx(w["ood"]["score"], abs=1e-4)
    # a gate that reads logits needs the image-only logits: its members run in PyTorch
    bundle.cache["ood_gate"] = OODGate("energy", quantile=0.9).fit(reference, reference)
    assert gate_feature_members(bundle) == []
    Predictor(bundle, "onnx", mc_samples=0).predict(images[:2])
    assert calls == [1]


def test_int8_probabilities_stay_close_to_fp32(exported: Bundle, fp32_engine: OnnxEngine, test_images: list) -> None:
    int8 = OnnxEngine(exported, precision="int8")
    # the graphs' own outputs (uncalibrated: the bundle's temperature, fitted on tiny flat outputs,
    # may sharpen them many times and so magnify any difference)
    p32 = np.exp(exported.log_probs(fp32_engine.view_logits(test_images), calibrated=False))
    p8 = np.exp(exported.log_probs(int8.view_logits(test_images), calibrated=False))
    diff = np.abs(p8 - p32)
    # measured on these 24 images: typical |dp| 1e-4, the worst one 0.013 on a fresh CI machine (the
    # tiny members are trained anew each session; near-ties flip: argmax agreement 23/24). Not
    # bit-exact (> 0): the graphs really are int8.
    assert diff.max() > 0 and np.median(diff) < 1e-3 and diff.max() < 0.05
    assert (p8.argmax(1) == p32.argmax(1)).mean() >= 0.8
    assert int8.precision == "int8"


def test_predictor_runs_on_onnx_end_to_end(exported: Bundle, test_images: list) -> None:
    onnx_pred = Predictor(exported, "onnx", mc_samples=2)
    torch_pred = Predictor(exported, "torch", mc_samples=0, device="cpu")
    got, want = onnx_pred.predict(test_images[:3]), torch_pred.predict(test_images[:3])
    assert onnx_pred.engine_name == "onnx-fp32" and got[0]["bundle"]["engine"] == "onnx-fp32"
    for g, w in zip(got, want, strict=True):
        assert g["prediction"]["decision"] == w["prediction"]["decision"]
        pg, pw = g["prediction"]["probabilities"], w["prediction"]["probabilities"]
        assert max(abs(pg[c] - pw[c]) for c in pg) < PARITY
        assert g["uncertainty"]["n_samples"] == 2  # MC dropout stays on the PyTorch members


def test_concurrent_calls_give_the_sequential_answer(fp32_engine: OnnxEngine, test_images: list) -> None:
    want = [fp32_engine.view_logits(test_images[i : i + 2]) for i in range(0, 8, 2)]
    got: dict[int, list[np.ndarray]] = {}
    threads = [
        threading.Thread(target=lambda k=k: got.__setitem__(k, fp32_engine.view_logits(test_images[2 * k : 2 * k + 2])))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        for a, b in zip(got[k], want[k], strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# -- refusals --------------------------------------------------------------------------------------
def _copy_onnx(exported: Bundle, tmp_path: Path) -> Path:
    d = tmp_path / "onnx"
    shutil.copytree(exported.path / "onnx", d)
    return d


def test_refuses_a_missing_folder_or_manifest(exported: Bundle, tmp_path: Path) -> None:
    with pytest.raises(OnnxError, match=r"does not exist: run `skinlesion export onnx .* --out .*nope` first"):
        make_engine(exported, "onnx", onnx_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxError, match=r"empty/onnx\.json is missing: run `skinlesion export onnx"):
        OnnxEngine(exported, tmp_path / "empty")


def test_recalibrated_bundle_keeps_its_graphs_other_weights_do_not(exported: Bundle, tmp_path: Path) -> None:
    changed = tmp_path / "bundle"
    shutil.copytree(exported.path, changed)
    meta = json.loads((changed / "bundle.json").read_text())
    meta["name"] = "recalibrated"
    write_meta(changed, meta)  # a new bundle_id, same networks
    recalibrated = load_bundle(changed)
    assert recalibrated.bundle_id != exported.bundle_id
    OnnxEngine(recalibrated)  # accepted
    manifest = json.loads((changed / "onnx" / "onnx.json").read_text())
    manifest["members"][1]["weights_sha256"] = "0" * 64
    (changed / "onnx" / "onnx.json").write_text(json.dumps(manifest))
    msg = r"onnx\.json: member .* was exported from weights 000000000000\.\.\., the bundle's are .*: run `skinlesion export onnx .*/bundle` again"
    with pytest.raises(OnnxError, match=msg):
        OnnxEngine(load_bundle(changed))


def test_refuses_a_changed_file(exported: Bundle, tmp_path: Path) -> None:
    d = _copy_onnx(exported, tmp_path)
    victim = next(d.glob("*.transposed.fp32.onnx"))
    with victim.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(OnnxError, match=rf"{victim.name}: sha256 differs from .*onnx\.json"):
        OnnxEngine(exported, d)


def test_refuses_a_precision_that_was_not_exported(exported: Bundle, tmp_path: Path) -> None:
    d = _copy_onnx(exported, tmp_path)
    m = json.loads((d / MANIFEST).read_text())
    m["precisions"] = ["fp32"]
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(OnnxError, match=r"precision 'int8' was not exported \(it has \['fp32'\]\): run `skinlesion export onnx .* --int8`"):
        OnnxEngine(exported, d, precision="int8")
    with pytest.raises(ValueError, match=r"The 'precision' parameter must be one of \('fp32', 'int8'\)\. Got 'fp16'"):
        OnnxEngine(exported, d, precision="fp16")


def test_export_argument_errors(
    exported: Bundle, tiny_members: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"The 'opset' parameter must be an integer >= 18\. Got 17"):
        export_bundle_onnx(exported, tmp_path / "x", opset=17)
    with pytest.raises(OnnxError, match="not saved in a folder"):
        export_bundle_onnx(bundle_from_checkpoint(tiny_members[0]))

    def no_data(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the dataset folder has gone
        raise DataError("/data/ham10000/HAM10000_metadata.csv is missing")

    monkeypatch.setattr(onnx_export, "validation_images", no_data)
    msg = r"INT8 calibration needs images of the bundle's validation split, which cannot be loaded \(/data/ham10000/.*csv is missing\)\. Give the dataset folder \(--data-root\)"
    with pytest.raises(OnnxError, match=msg):
        export_bundle_onnx(exported, tmp_path / "x", int8=True)
    assert not (tmp_path / "x").exists()  # refused before writing anything


def test_export_refuses_graphs_that_disagree_with_pytorch(exported: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_member(member, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return {"name": member.name, "parity": {"fp32": {"max_abs_prob_diff": 0.02}}}

    monkeypatch.setattr(onnx_export, "_export_member", fake_member)
    with pytest.raises(OnnxError, match=r"differ from PyTorch by up to 0\.02 \(tolerance 0\.0001\); .*onnx\.json was not written"):
        export_bundle_onnx(exported, tmp_path / "bad", calibration_images=[np.zeros((8, 8, 3), np.uint8)])
    assert not (tmp_path / "bad" / MANIFEST).exists()


def test_graph_shapes_follow_the_views() -> None:
    assert graph_shapes((48, 64), ("identity", "hflip")) == [(48, 64)]
    assert graph_shapes((48, 64), D4_VIEWS) == [(48, 64), (64, 48)]
    assert graph_shapes((48, 64), ("rot90",)) == [(64, 48)]
    assert graph_shapes((56, 56), D4_VIEWS) == [(56, 56)]


# -- the command -----------------------------------------------------------------------------------
def test_cli_exports_int8_calibrated_on_validation(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    r = runner.invoke(app, ["export", "onnx", str(tiny_bundle), "--out", str(out), "--int8", "--calibration", "6"])
    assert r.exit_code == 0, r.output
    assert "fp32  max |dp|" in r.output and "int8  max |dp|" in r.output and "validation split" in r.output
    m = read_manifest(out)
    cal = m["quantisation"]["calibration_source"]
    assert cal["source"] == "validation split" and cal["n_images"] == 6 and len(cal["image_ids"]) == 6
    assert m["parity"]["images"] == "validation split (images not used for calibration)"
    bundle = load_bundle(tiny_bundle)
    val_ids = set(load_bundle_split(bundle, "val").frame["image_id"].astype(str))
    assert set(cal["image_ids"]) <= val_ids  # calibration never touches test
    assert [len(e["graphs"]) for e in m["members"]] == [1, 1]  # flips views: no transposed graph
    OnnxEngine(bundle, out, precision="int8")  # loads and verifies


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", "onnx", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "error:" in r.output and "does not exist" in r.output
