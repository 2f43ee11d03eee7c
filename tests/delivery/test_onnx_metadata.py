"""ONNX export and runtime of metadata fusion members: the graphs' second input, parity with
PyTorch with the metadata given, missing and mixed in one batch (after the bundle's full
post-processing, both operating points), INT8 with metadata, the refusal of an old image-only
export, and ``--engine auto``.

One export (fp32 + int8) of a copy of the calibrated fusion bundle (both operating points) is shared
by the module: member ``m0`` takes age, sex and site, ``m1`` the image only (both 48x64, flips TTA).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from skinlesion._hashing import sha256_file
from skinlesion.cli.main import app
from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.engine import Predictor, TorchEngine, choose_engine
from skinlesion.delivery.metadata import MetadataUnsupportedError
from skinlesion.delivery.onnx_export import export_bundle_onnx, export_graph
from skinlesion.delivery.onnx_runtime import MANIFEST, OnnxEngine, OnnxError, read_manifest
from skinlesion.ensemble.bundle import Bundle, load_bundle
from skinlesion.evaluation import load_bundle_split
from skinlesion.records.metadata import normalise_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
PARITY = 1e-4  # as tests/delivery/test_onnx.py
FUSION, IMAGE_ONLY = "m0-test_efficientnet", "m1-test_efficientnet"
OLD = {"age": 80, "sex": "male", "site": "back"}
YOUNG = {"age": 5, "sex": "female", "site": "face"}


def _lesions(n: int) -> list[np.ndarray]:
    labels = ["MEL", "NV", "BCC", "BKL", "AKIEC", "DF"]
    return [generate_lesion(labels[i % len(labels)], seed=i, size=(60, 80), hair=False, vignette=False)[0] for i in range(n)]


@pytest.fixture(scope="module")
def exported(calibrated_fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    dst = tmp_path_factory.mktemp("onnx-fusion") / "bundle"
    shutil.copytree(calibrated_fusion_bundle, dst)
    bundle = load_bundle(dst)
    assert [m.name for m in bundle.members] == [FUSION, IMAGE_ONLY]
    table = load_bundle_split(bundle, "val")
    export_bundle_onnx(bundle, int8=True, calibration_images=[table.load_image(i) for i in range(8)], n_parity=4)
    return bundle


@pytest.fixture(scope="module")
def fp32(exported: Bundle) -> OnnxEngine:
    return OnnxEngine(exported)


def test_fusion_graphs_take_the_metadata_and_the_manifest_says_so(exported: Bundle, fp32: OnnxEngine) -> None:
    import onnx

    d = exported.path / "onnx"
    m = read_manifest(d)
    assert m["format_version"] == 3 and "metadata" in m["graph"] and "'features'" in m["graph"]
    fusion, image_only = m["members"]
    assert fusion["outputs"] == image_only["outputs"] == ["logits", "features"]
    # the gate's features: the fusion member's backbone features, whatever the metadata (identity view)
    assert 0 <= fusion["parity"]["fp32"]["max_abs_feature_diff"] < PARITY and fp32.gives_features == [True, True]
    encoder = exported.members[0].model.metadata_encoder
    assert fusion["inputs"] == ["input", "metadata"] and image_only["inputs"] == ["input"]
    assert fusion["metadata"]["feature_names"] == list(encoder.feature_names_) and fusion["metadata"]["dim"] == encoder.n_features
    assert image_only["metadata"] is None
    for precision in ("fp32", "int8"):
        graph = onnx.load(str(d / fusion["graphs"][0]["files"][precision]["file"])).graph
        dims = [[x.dim_param or x.dim_value for x in t.type.tensor_type.shape.dim] for t in graph.input]
        assert [t.name for t in graph.input] == ["input", "metadata"]
        assert dims[1] == [dims[0][0], encoder.n_features] and isinstance(dims[0][0], str)  # one dynamic batch axis
    # parity at export covers both cases for the fusion member, the image only for the other
    given, missing = fusion["parity"]["fp32"]["metadata"]["given"], fusion["parity"]["fp32"]["metadata"]["missing"]
    assert given["max_abs_prob_diff"] < PARITY and missing["max_abs_prob_diff"] < PARITY
    assert fusion["parity"]["fp32"]["max_abs_prob_diff"] == max(given["max_abs_prob_diff"], missing["max_abs_prob_diff"])
    assert "metadata" not in image_only["parity"]["fp32"]
    assert "drawn from the fusion members' encoders" in m["parity"]["metadata"]  # given images carry no metadata
    assert fp32.takes_metadata == [True, False] and fp32.accepts_metadata


CASES = {
    "given": [OLD, YOUNG, OLD, {"age": 40, "sex": "female", "site": "back"}],
    "missing": None,
    "mixed": [OLD, None, YOUNG, None],
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_matches_torch_with_metadata_given_missing_and_mixed(exported: Bundle, fp32: OnnxEngine, case: str) -> None:
    images = _lesions(4)
    records = normalise_records(CASES[case], 4)
    z_onnx = fp32.view_logits(images, metadata=records)
    z_torch = TorchEngine(exported, "cpu").view_logits(images, metadata=records)
    given = exported.metadata_given(records, 4)
    assert given.tolist() == {"given": [True] * 4, "missing": [False] * 4, "mixed": [True, False, True, False]}[case]
    p_onnx = exported.predict_from_logits(z_onnx, metadata_given=given)
    p_torch = exported.predict_from_logits(z_torch, metadata_given=given)
    assert np.abs(p_onnx.probs - p_torch.probs).max() < PARITY
    np.testing.assert_array_equal(p_onnx.decision, p_torch.decision)
    # the metadata reaches the graph: its answer moves with it (by far more than the parity bound)
    z_missing = fp32.view_logits(images)
    moved = np.abs(z_onnx[0] - z_missing[0]).max()
    assert (moved > 100 * PARITY) if case != "missing" else moved == 0
    np.testing.assert_array_equal(z_onnx[1], z_missing[1])  # the image-only member ignores it
    # the features the out-of-distribution gate reads are the image's alone, whatever the metadata
    _, f_with = fp32.view_logits_and_features(images, metadata=records, features_of=[FUSION])
    _, f_without = fp32.view_logits_and_features(images, features_of=[FUSION])
    np.testing.assert_allclose(f_with[FUSION], f_without[FUSION], atol=1e-6)


def test_predictor_records_match_torch_for_a_mixed_batch(exported: Bundle) -> None:
    images, metadata = _lesions(4), CASES["mixed"]
    got = Predictor(exported, "onnx", mc_samples=0).predict(images, metadata=metadata)
    want = Predictor(exported, "torch", mc_samples=0, device="cpu").predict(images, metadata=metadata)
    assert {g["bundle"]["engine"] for g in got} == {"onnx-fp32"}
    for g, w in zip(got, want, strict=True):
        pg, pw = g["prediction"]["probabilities"], w["prediction"]["probabilities"]
        assert max(abs(pg[c] - pw[c]) for c in pg) < PARITY
        for key in ("decision", "operating_point", "operating_point_name"):
            assert g["prediction"].get(key) == w["prediction"].get(key), key
        assert g["metadata"] == w["metadata"]
    names = [g["prediction"].get("operating_point_name") for g in got]
    assert names[0] != names[1]  # both operating points were used in the batch


def test_int8_runs_with_metadata(exported: Bundle, fp32: OnnxEngine) -> None:
    int8 = OnnxEngine(exported, precision="int8")
    assert int8.accepts_metadata
    images, records = _lesions(6), normalise_records([OLD, YOUNG, OLD, None, YOUNG, None], 6)
    p8 = np.exp(exported.log_probs(int8.view_logits(images, metadata=records), calibrated=False))
    p32 = np.exp(exported.log_probs(fp32.view_logits(images, metadata=records), calibrated=False))
    diff = np.abs(p8 - p32)
    assert diff.max() > 0 and np.median(diff) < 1e-2 and diff.max() < 0.1  # quantised, still close
    without = int8.view_logits(images)[0]
    assert np.abs(int8.view_logits(images, metadata=records)[0][0] - without[0]).max() > 0  # metadata reaches it


def test_refuses_metadata_features_other_than_the_members(exported: Bundle, tmp_path: Path) -> None:
    d = tmp_path / "onnx"
    shutil.copytree(exported.path / "onnx", d)
    m = json.loads((d / MANIFEST).read_text())
    m["members"][0]["metadata"]["feature_names"] = ["age_z"]
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(OnnxError, match=rf"member '{FUSION}' was exported with metadata features \['age_z'\], the bundle's member encodes"):
        OnnxEngine(exported, d)


# -- an export written before graphs took metadata (manifest format 1) -----------------------------------
def _logits_only(path: Path) -> None:
    """A graph as exports before format 3 wrote it: the logits are its only output."""
    import onnx

    proto = onnx.load(str(path))
    kept = [o for o in proto.graph.output if o.name == "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def old_export(exported: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export as format 1 wrote it: the fusion member's graphs are ``model(x)`` (image only)."""
    import copy

    d = tmp_path_factory.mktemp("onnx-v1") / "onnx"
    shutil.copytree(exported.path / "onnx", d)
    m = json.loads((d / MANIFEST).read_text())
    m["format_version"] = 1
    model = copy.deepcopy(exported.members[0].model).cpu().eval()
    for e in m["members"]:
        e.pop("inputs"), e.pop("metadata"), e.pop("outputs")
    for i, e in enumerate(m["members"]):
        for g in e["graphs"]:
            path = d / g["files"]["fp32"]["file"]
            if i == 0:
                export_graph(model, tuple(g["input_size"]), path)
            _logits_only(path)
            g["files"] = {"fp32": {**g["files"]["fp32"], "sha256": sha256_file(path)}}
    m["precisions"] = ["fp32"]
    (d / MANIFEST).write_text(json.dumps(m))
    return d


def test_an_old_image_only_export_still_loads_and_refuses_metadata(exported: Bundle, old_export: Path) -> None:
    engine = OnnxEngine(exported, old_export)
    assert engine.takes_metadata == [False, False] and not engine.accepts_metadata
    assert engine.gives_features == [False, False]  # the gate then runs its members in PyTorch
    assert engine.view_logits_and_features(_lesions(1), features_of=[FUSION])[1] == {}
    assert engine.image_only_fusion_members() == [FUSION]
    images = _lesions(2)
    reexport = r"re-export with `skinlesion export onnx .*/bundle --out .*/onnx` \(graphs that take the metadata\), use the torch engine"
    refused = rf"take the image only \(exported before graphs took metadata\), but members \['{FUSION}'\].*{reexport}"
    with pytest.raises(MetadataUnsupportedError, match=refused):
        engine.view_logits(images, metadata=[OLD, None])
    predictor = Predictor(exported, "onnx", onnx_dir=old_export, mc_samples=0)
    assert not predictor.accepts_metadata
    with pytest.raises(MetadataUnsupportedError, match=rf"onnx-fp32 engine runs image-only graphs, but members \['{FUSION}'\].*{reexport}"):
        predictor.predict(images, metadata=[OLD, None])
    # without metadata it gives today's answer: the "metadata missing" prediction, as torch
    got = exported.predict_from_logits(engine.view_logits(images)).probs
    want = exported.predict_from_logits(TorchEngine(exported, "cpu").view_logits(images)).probs
    assert np.abs(got - want).max() < PARITY
    # and auto does not pick it: it would refuse what a fusion bundle may be asked
    chosen, why = choose_engine(exported, onnx_dir=old_export)
    assert chosen.name == "torch" and "image-only graphs for fusion members" in why and "re-export" in why


# -- engine auto ---------------------------------------------------------------------------------------
def test_auto_picks_onnx_for_a_matching_export_and_torch_otherwise(exported: Bundle, tmp_path: Path) -> None:
    p = Predictor(exported, mc_samples=0)  # the default engine is auto
    assert p.engine_name == "onnx-fp32" and p.engine_choice.startswith("auto: onnx-fp32 (the ONNX export in")
    assert p.accepts_metadata
    assert Predictor(exported, precision="int8", mc_samples=0).engine_name == "onnx-int8"
    none = Predictor(exported, onnx_dir=tmp_path / "nope", mc_samples=0)
    assert none.engine_name == "torch" and "no usable ONNX export" in none.engine_choice and "does not exist" in none.engine_choice
    stale = tmp_path / "stale"
    shutil.copytree(exported.path / "onnx", stale)
    m = json.loads((stale / MANIFEST).read_text())
    m["members"][1]["weights_sha256"] = "0" * 64
    (stale / MANIFEST).write_text(json.dumps(m))
    assert Predictor(exported, onnx_dir=stale, mc_samples=0).engine_name == "torch"
    assert choose_engine(exported, device="cuda:0")[0].name == "torch"  # a PyTorch device asked for
    assert Predictor(exported, "torch", mc_samples=0).engine_choice == "torch (as asked)"


def _write_images(folder: Path, n: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, image in enumerate(_lesions(n)):
        Image.fromarray(image).save(folder / f"l{i}.png")
    return folder


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def test_cli_engine_auto_is_the_default(exported: Bundle, calibrated_fusion_bundle: Path, tmp_path: Path) -> None:
    src = _write_images(tmp_path / "in", 2)
    table = tmp_path / "meta.csv"
    table.write_text("image,age,sex,site\nl0,80,male,back\n")
    common = [str(src), "--mc-samples", "0", "--workers", "0", "--metadata", str(table)]
    r = runner.invoke(app, ["predict", *common, "-b", str(exported.path), "-o", str(tmp_path / "onnx"), "--report"])
    assert r.exit_code == 0, r.output
    assert "(onnx-fp32)" in r.output  # the summary names the engine chosen
    run = json.loads((tmp_path / "onnx" / "run.json").read_text())
    assert run["options"]["engine"] == "auto" and run["engine"] == "onnx-fp32"
    rows = _rows(tmp_path / "onnx" / "predictions.csv")
    assert rows["l0"]["age"] == "80" and rows["l1"]["age"] == ""  # metadata served on ONNX
    assert {r["engine"] for r in rows.values()} == {"onnx-fp32"}
    assert (tmp_path / "onnx" / "reports" / "l0.html").is_file()  # explanations run on the torch members
    r = runner.invoke(app, ["predict", *common, "-b", str(calibrated_fusion_bundle), "-o", str(tmp_path / "torch")])
    assert r.exit_code == 0, r.output
    assert "(torch)" in r.output and json.loads((tmp_path / "torch" / "run.json").read_text())["engine"] == "torch"
    # explicit engines keep working
    r = runner.invoke(app, ["predict", *common, "-b", str(exported.path), "-o", str(tmp_path / "t2"), "--engine", "torch"])
    assert r.exit_code == 0 and "(torch)" in r.output
    torch_rows = _rows(tmp_path / "t2" / "predictions.csv")
    for image in ("l0", "l1"):
        assert rows[image]["decision"] == torch_rows[image]["decision"]
