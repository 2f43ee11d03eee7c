"""Export a decision bundle's members to ONNX, optionally with static INT8 quantisation.

Each member becomes ``<member>.fp32.onnx``: the network only, input ``"input"`` ``(batch, 3, H, W)``
float32 resized and normalised as the member's ``preprocessing`` says, outputs ``"logits"``
``(batch, K)`` and ``"features"`` ``(batch, F)`` (the pooled image features of the same pass, read by
the out-of-distribution gate; manifest format 3 lists each member's ``outputs``), dynamic batch
axis, static spatial axes (a non-square member whose TTA views swap the axes also gets
``<member>.transposed.fp32.onnx`` for ``(W, H)``; see :mod:`skinlesion.delivery.onnx_runtime`). A
metadata fusion member's graphs have a second input ``"metadata"`` ``(batch, D)`` float32 on the
same batch axis, the member's own encoding of age, sex and site (``model.encode_metadata``; the
all-missing encoding gives what ``model(x)`` gives): they compute ``model(x, meta)`` (manifest
format 2 records each member's ``inputs`` and ``metadata``). Resizing, normalisation, TTA views,
temperatures, member weights, thresholds and the decision rule are *not* in the graphs: they stay
in ``bundle.json``, so both engines share one post-processing path.

``int8=True`` adds ``<member>.int8.onnx``: ONNX Runtime static quantisation in QDQ format (uint8
activations, int8 weights per output channel, MinMax ranges; Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"), calibrated on the
images each graph sees at inference (the member's preprocessing and the bundle's TTA views) from
the bundle's *validation* split, or on images the caller gives; never on test. A fusion member's
graph is calibrated with every other image's metadata hidden (all-missing encoding), so both
inputs' ranges are covered: the validation rows' own age, sex and site, or, for given images,
records drawn from the members' encoders (ages 5-85, both sexes, their sites).

``onnx.json`` records the bundle it belongs to (``bundle_id``), every file's sha256, input sizes,
opset, precisions, the probability parity against PyTorch measured at export (all TTA views),
library versions and the calibration source. For a fusion member parity is measured with the
metadata given and with it missing (``parity.<precision>.metadata``; the top-level figures are the
worse of the two). An fp32 graph whose probabilities differ from PyTorch by more than ``tolerance``
is an error and no manifest is written.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import skinlesion
from skinlesion._hashing import sha256_file
from skinlesion._json import json_default
from skinlesion.data.metadata import FEATURES as METADATA_FIELDS
from skinlesion.data.metadata import SEXES
from skinlesion.delivery.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    FEATURES,
    INPUT,
    MANIFEST,
    METADATA,
    OUTPUT,
    WEIGHTS_KEY,
    OnnxError,
    default_onnx_dir,
    encoded_metadata,
    file_stem,
    graph_shapes,
    graph_with_weights,
    make_session,
    run_views,
    session_runner,
)
from skinlesion.ensemble.bundle import Bundle
from skinlesion.ensemble.members import Member
from skinlesion.ensemble.predict import CPU_MAX_ROWS, images_view_logits
from skinlesion.errors import SkinLesionError
from skinlesion.inference.onnx_graph import DEFAULT_OPSET, metadata_dim, onnx_program, quiet_root_logger
from skinlesion.inference.tta import SWAPS_AXES, apply_view
from skinlesion.ood.features import image_features

log = logging.getLogger(__name__)

MIN_OPSET = 18  # the opset of torch's ONNX function library
GRAPH_NOTE = (
    "Network only: input 'input' (batch, 3, H, W) float32, resized and normalised as the member's "
    "preprocessing in bundle.json says; a metadata fusion member also takes 'metadata' (batch, D) "
    "float32, its encoder's encoding of age, sex and site (all-missing encoding: metadata unknown); "
    "outputs 'logits' (batch, K) and 'features' (batch, F), the pooled image features (a fusion member's "
    "backbone features, before the metadata is joined) that the out-of-distribution gate reads. "
    "Preprocessing, metadata encoding, TTA views, temperatures, member "
    "weights, thresholds and the decision rule stay in bundle.json and the members' checkpoints."
)
SHARED_NOTE = (
    " fp32 graphs marked 'weights': 'member' hold no copy of the member's parameters and buffers (batch "
    "norms unfolded, initializers named as in its state_dict; the names and shapes are in the graph's "
    f"'{WEIGHTS_KEY}' metadata): skinlesion fills them in from the member's weights when it loads a graph."
)
QUANTISATION = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "QUInt8 (asymmetric, per tensor)",
    "weights": "QInt8 (symmetric, per output channel, 7-bit range)",
    "calibration": "MinMax",
    # 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512F) ONNX Runtime's u8 x s8 kernels use
    # VPMADDUBSW, whose 16-bit sums saturate with full-range weights (ONNX Runtime's quantisation docs);
    # on such a CPU full-range weights moved the shipped bundle's probabilities by up to 0.135.
    "reduce_range": True,
}


# -- images for calibration and parity ------------------------------------------------------------
def _check_images(images: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    out = [np.asarray(im) for im in images]
    if not out:
        raise ValueError(f"The '{name}' parameter holds no image.")
    for i, a in enumerate(out):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{name}[{i}] must be an RGB uint8 array (H, W, 3). Got dtype {a.dtype} and shape {a.shape} instead.")
    return out


def _stratified(labels: np.ndarray, n: int, seed: int) -> list[int]:
    """Up to ``n`` row indices taking classes in turn (rare classes are covered), seeded."""
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == k))) for k in np.unique(labels)]
    order: list[int] = []
    while len(order) < n and any(queues):
        order.extend(int(q.pop(0)) for q in queues if q)
    return order[:n]


def validation_images(
    bundle: Bundle, n: int, *, data_root: str | None = None, seed: int = 0
) -> tuple[list[np.ndarray], list[str], list[dict[str, Any]]]:
    """``n`` images of the bundle's validation split (classes in turn, seeded), their image ids and
    their metadata records (``age``, ``sex``, ``site`` where the table has them)."""
    from skinlesion.evaluation import load_bundle_split

    table = load_bundle_split(bundle, "val", data_root)
    idx = _stratified(table.labels(), n, seed)
    ids = table.frame["image_id"].astype(str).to_numpy()
    columns = [c for c in METADATA_FIELDS if c in table.frame.columns]
    rows = table.frame.iloc[idx][columns].astype(object)
    records = [{k: (None if _missing(v) else v) for k, v in r.items()} for r in rows.to_dict("records")]
    return [table.load_image(i) for i in idx], [str(ids[i]) for i in idx], records


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _synthetic_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(150, 200, 3), dtype=np.uint8) for _ in range(n)]


def synthetic_records(n: int, members: Sequence[Member], seed: int = 0) -> list[dict[str, Any]]:
    """``n`` metadata records drawn from what fusion ``members`` encode (ages 5-85, both sexes, the
    sites of their encoders), seeded: for parity and calibration on images that come without metadata."""
    sites = sorted({s for m in members if metadata_dim(m.model) is not None for s in m.model.metadata_encoder.sites_})
    rng = np.random.default_rng(seed)
    return [
        {
            "age": float(rng.integers(1, 18) * 5),
            "sex": SEXES[int(rng.integers(len(SEXES)))],
            "site": sites[int(rng.integers(len(sites)))] if sites else None,
        }
        for _ in range(n)
    ]


# -- one graph -------------------------------------------------------------------------------------
def export_graph(
    model: torch.nn.Module, shape: tuple[int, int], path: Path, opset: int = DEFAULT_OPSET, *, meta_dim: int | None = None,
    share_weights: bool = False,
) -> None:
    """Export ``model`` (eval mode, CPU) for inputs ``(batch, 3, *shape)`` with a dynamic batch axis
    (torch.export-based exporter; spatial axes static, see :mod:`skinlesion.delivery.onnx_runtime`).
    Outputs: ``"logits"`` and ``"features"``, the pooled image features of the same pass
    (:func:`~skinlesion.models.fusion.logits_and_image_features`), built by
    :func:`~skinlesion.inference.onnx_graph.onnx_program`.

    ``meta_dim``: a fusion model's metadata length ``D``: the graph computes ``model(x, meta)`` with a
    second input ``"metadata"`` ``(batch, D)`` sharing the batch axis.

    ``share_weights``: the graph keeps the model's own parameters and buffers as initializers named
    as in its ``state_dict`` (constants folded, but batch norms *not* folded into convolutions,
    which ONNX Runtime does when it loads the graph), and the file holds none of them: they are
    filled in from the member's weights when the graph is loaded
    (:func:`~skinlesion.delivery.onnx_runtime.graph_with_weights`), so the export adds kilobytes
    to a bundle, not a second copy of its weights."""
    program = onnx_program(model, shape, opset=opset, meta_dim=meta_dim, optimize=not share_weights)
    if not share_weights:
        program.save(str(path), external_data=False)
        check_graph(path, shape, meta_dim=meta_dim)
        return
    proto = _strip_weights(_fold_constants(program.model_proto), model)
    import onnx

    onnx.save(proto, str(path))
    check_graph(path, shape, meta_dim=meta_dim, weights=model)


def _fold_constants(proto: Any) -> Any:
    """Constant folding and dead-node removal only (onnxscript), keeping the parameters as they are:
    the exporter's full optimisation also folds batch norms into the convolution weights."""
    from onnxscript import ir, optimizer

    model = ir.serde.deserialize_model(proto)
    with quiet_root_logger():
        optimizer.fold_constants(model)
        optimizer.remove_unused_nodes(model)
    return ir.serde.serialize_model(model)


def _strip_weights(proto: Any, model: torch.nn.Module) -> Any:
    """``proto`` without the initializers that are the model's own ``state_dict`` tensors (same name,
    shape and values); the graph's ``weights`` metadata entry lists them."""
    from onnx import numpy_helper

    state = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    kept, stripped = [], {}
    for init in proto.graph.initializer:
        ref = state.get(init.name)
        if ref is not None and tuple(init.dims) == ref.shape and np.array_equal(numpy_helper.to_array(init), ref):
            stripped[init.name] = list(ref.shape)
        else:
            kept.append(init)
    if not stripped:
        raise OnnxError("no initializer of the exported graph is one of the model's own tensors: cannot share its weights")
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    for node in proto.graph.node:  # the exporter's per-node provenance (stack traces, fx names): ~60% of the file
        del node.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = WEIGHTS_KEY, json.dumps(stripped)
    return proto


def check_graph(
    path: Path, shape: tuple[int, int], *, meta_dim: int | None = None, weights: torch.nn.Module | None = None
) -> None:
    """onnx.checker plus the input/output contract (names, dynamic batch, spatial shape, metadata length).
    ``weights``: the model whose tensors fill a shared-weight graph (checked as loaded)."""
    import onnx

    if weights is None:
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path), load_external_data=False).graph
    else:
        proto = graph_with_weights(onnx.load(str(path)), weights.state_dict(), str(path))
        onnx.checker.check_model(proto, full_check=True)
        graph = proto.graph
    def dims(t: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim]

    names = [INPUT] if meta_dim is None else [INPUT, METADATA]
    ins, outs = [dims(t) for t in graph.input], [dims(t) for t in graph.output]
    batch = ins[0][0] if ins and ins[0] else None
    ok = (
        [t.name for t in graph.input] == names and [t.name for t in graph.output] == [OUTPUT, FEATURES]
        and isinstance(batch, str) and ins[0][1:] == [3, *shape]
        and all(len(o) == 2 and isinstance(o[0], str) for o in outs)
        and (meta_dim is None or (ins[1][1:] == [meta_dim] and ins[1][0] == batch))
    )
    if not ok:
        want = f"input {INPUT!r} (batch, 3, {shape[0]}, {shape[1]})" + (f", {METADATA!r} (batch, {meta_dim})" if meta_dim else "")
        raise OnnxError(
            f"{path}: expected {want} and outputs {OUTPUT!r} (batch, K), {FEATURES!r} (batch, F); got inputs "
            f"{[t.name for t in graph.input]} {ins}, outputs {[t.name for t in graph.output]} {outs}"
        )


def quantize_graph(fp32: Path, int8: Path, rows: np.ndarray, meta: np.ndarray | None = None, *, batch_size: int = 16) -> None:
    """Static QDQ INT8 quantisation of ``fp32`` calibrated on normalised input ``rows`` ``(R, 3, H, W)``
    and, for a graph with a metadata input, their encoded metadata ``meta`` ``(R, D)``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([
                {INPUT: rows[i : i + batch_size]} | ({} if meta is None else {METADATA: meta[i : i + batch_size]})
                for i in range(0, len(rows), batch_size)
            ])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp, quiet_root_logger():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + graph optimisation, as ORT recommends
        quantize_static(
            str(pre), str(int8), Rows(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
    onnx.checker.check_model(str(int8))


# -- one member ------------------------------------------------------------------------------------
def _views_of(shape: tuple[int, int], member: Member, views: Sequence[str]) -> list[str]:
    """The views whose rows have spatial ``shape`` (all of them for a square member)."""
    h, w = member.input_size
    if h == w:
        return list(views)
    return [v for v in views if (v in SWAPS_AXES) == (shape != (h, w))]


def _rows(
    member: Member, images: Sequence[np.ndarray], views: Sequence[str], records: Sequence[dict[str, Any]] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibration rows of every view (view-major) and, for a fusion member, their encoded metadata:
    the images' records with every other image's hidden (both inputs' ranges), repeated per view."""
    with torch.inference_mode():
        x = member.preprocess(images, "cpu")
        rows = torch.cat([apply_view(x, v) for v in views], dim=0).contiguous().numpy()
    if metadata_dim(member.model) is None:
        return rows, None
    shown = None if records is None else [dict(r) if i % 2 == 0 else {} for i, r in enumerate(records)]
    return rows, np.tile(encoded_metadata(member, shown, len(images)), (len(views), 1))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _diffs(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    p_ref, p_got = _softmax(ref.astype(np.float64)), _softmax(got.astype(np.float64))
    return {
        "max_abs_prob_diff": float(np.abs(p_ref - p_got).max()),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
    }


def member_parity(
    member: Member, paths: dict[tuple[int, int], Path], views: Sequence[str], images: Sequence[np.ndarray],
    records: Sequence[dict[str, Any]] | None = None, reference: dict[str, np.ndarray] | None = None,
    *, shared: bool = False,
) -> dict[str, Any]:
    """ONNX vs PyTorch on ``images`` through every view: max abs difference of probabilities and logits.

    A graph with a metadata input is measured twice, with ``records`` given (default: drawn as
    :func:`synthetic_records` does) and with the metadata missing; ``metadata`` holds each and the
    top-level figures are the worse of the two. ``reference``: PyTorch logits per case (``"given"``,
    ``"missing"``), when already computed. ``shared``: shared-weight graphs (the member's tensors are
    filled in; whole graphs load from their files as they are)."""
    state = member.model.state_dict() if shared else None
    sessions = {s: make_session(p, weights=state) for s, p in paths.items()}
    first = next(iter(sessions.values()))
    takes = [i.name for i in first.get_inputs()] == [INPUT, METADATA]
    x = member.preprocess(images, "cpu")
    cases: dict[str, Sequence[dict[str, Any]] | None] = {"missing": None}
    if takes:
        cases = {"given": records if records is not None else synthetic_records(len(images), [member]), "missing": None}
    outputs = [o.name for o in first.get_outputs()]
    out: dict[str, dict[str, float]] = {}
    got_features = None
    for case, recs in cases.items():
        ref = (reference or {}).get(case)
        if ref is None:
            ref = images_view_logits(member, images, views, device="cpu", metadata=recs)
        meta = encoded_metadata(member, recs, len(images)) if takes else None
        got = run_views(x, views, lambda s: session_runner(sessions[s], outputs), max_rows=CPU_MAX_ROWS, meta=meta)
        out[case] = _diffs(ref, got[0])
        if len(got) > 1 and "identity" in views:
            got_features = got[1][:, list(views).index("identity")]
    worst = {
        "max_abs_prob_diff": max(d["max_abs_prob_diff"] for d in out.values()),
        "max_abs_logit_diff": max(d["max_abs_logit_diff"] for d in out.values()),
        "argmax_agreement": min(d["argmax_agreement"] for d in out.values()),
    }
    if got_features is not None:  # what the out-of-distribution gate reads: identity view, image only
        ref_features = image_features(member, images, device="cpu")[0].features
        worst["max_abs_feature_diff"] = float(np.abs(ref_features - got_features).max())
    return {**worst, "n_images": len(images), "n_views": len(views), **({"metadata": out} if takes else {})}


def _record(path: Path, shared: bool = False) -> dict[str, Any]:
    """A file's manifest record; ``shared``: a shared-weight graph (``"weights": "member"``)."""
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size} | ({"weights": "member"} if shared else {})


def _export_member(
    member: Member, stem: str, out: Path, views: Sequence[str], opset: int, calibration: list[np.ndarray] | None,
    parity_images: list[np.ndarray], calibration_records: list[dict[str, Any]] | None = None,
    parity_records: list[dict[str, Any]] | None = None, share_weights: bool = False,
) -> dict[str, Any]:
    model = copy.deepcopy(member.model).cpu().eval()
    meta_dim = metadata_dim(model)
    graphs, paths = [], {"fp32": {}, "int8": {}}
    for shape in graph_shapes(member.input_size, views):
        name = stem if shape == member.input_size else f"{stem}.transposed"
        shape_views = _views_of(shape, member, views)
        fp32 = out / f"{name}.fp32.onnx"
        log.info("exporting %s for input %s (views %s)%s", fp32.name, shape, ", ".join(shape_views), " with metadata" if meta_dim else "")
        export_graph(model, shape, fp32, opset, meta_dim=meta_dim, share_weights=share_weights)
        files = {"fp32": _record(fp32, share_weights)}
        paths["fp32"][shape] = fp32
        if calibration is not None:
            int8 = out / f"{name}.int8.onnx"
            log.info("quantising %s on %d calibration images x %d views", int8.name, len(calibration), len(shape_views))
            with tempfile.TemporaryDirectory() as tmp:
                source = fp32
                if share_weights:  # the INT8 graph holds its own weights: quantise the usual whole export
                    source = Path(tmp) / fp32.name
                    export_graph(model, shape, source, opset, meta_dim=meta_dim)
                quantize_graph(source, int8, *_rows(member, calibration, shape_views, calibration_records))
            files["int8"] = _record(int8)
            paths["int8"][shape] = int8
        graphs.append({"input_size": list(shape), "views": shape_views, "files": files})
    cases = {"missing": None} if meta_dim is None else {"given": parity_records, "missing": None}
    reference = {c: images_view_logits(member, parity_images, views, device="cpu", metadata=r) for c, r in cases.items()}
    parity = {
        p: member_parity(member, ps, views, parity_images, parity_records, reference, shared=share_weights and p == "fp32")
        for p, ps in paths.items() if ps
    }
    metadata = None
    if meta_dim is not None:
        encoder = model.metadata_encoder
        metadata = {"features": list(encoder.features), "feature_names": list(encoder.feature_names_), "dim": meta_dim}
    return {
        "name": member.name,
        "backbone": member.backbone,
        "weights_sha256": member.meta.get("weights_sha256"),
        "input_size": list(member.input_size),
        "inputs": [INPUT] if meta_dim is None else [INPUT, METADATA],
        "outputs": [OUTPUT, FEATURES],
        "weights": "member" if share_weights else "graph",
        "metadata": metadata,
        "opset": opset,
        "precisions": [p for p, ps in paths.items() if ps],
        "files": [g["files"][p]["file"] for g in graphs for p in g["files"]],
        "graphs": graphs,
        "parity": parity,
    }


# -- the bundle ------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "skinlesion": skinlesion.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def export_bundle_onnx(
    bundle: Bundle,
    out_dir: str | Path | None = None,
    *,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    calibration_images: Sequence[np.ndarray] | None = None,
    n_calibration: int = 64,
    data_root: str | None = None,
    n_parity: int = 4,
    tolerance: float = 1e-4,
    seed: int = 0,
    share_weights: bool = False,
) -> Path:
    """Write every member of ``bundle`` as ONNX (network only) plus ``onnx.json``; returns the folder.

    Args:
        bundle: a loaded decision bundle.
        out_dir: output folder (default ``<bundle>/onnx``).
        int8: also write static INT8 (QDQ) graphs.
        opset: ONNX opset (>= 18).
        calibration_images: RGB uint8 images for INT8 calibration; default ``n_calibration``
            images of the bundle's validation split (classes in turn). Never pass test images.
        n_calibration: number of validation images used for calibration.
        data_root: the dataset folder, if it moved since training.
        n_parity: images on which parity with PyTorch is measured (validation images not used for
            calibration when available, else the given calibration images, else random images).
        tolerance: largest fp32 probability difference from PyTorch accepted.
        share_weights: fp32 graphs without the member's tensors, filled in from the member's
            weights when loaded (a few kB per graph instead of a copy of the weights; what the
            shipped default bundle carries). Such graphs run only inside skinlesion: for another
            runtime export without it. INT8 graphs always hold their own weights.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"The 'opset' parameter must be an integer >= {MIN_OPSET}. Got {opset!r} instead.")
    for pname, v in (("n_calibration", n_calibration), ("n_parity", n_parity)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"The '{pname}' parameter must be a positive integer. Got {v!r} instead.")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise ValueError(f"The 'tolerance' parameter must be a positive number. Got {tolerance!r} instead.")
    out = Path(out_dir) if out_dir is not None else default_onnx_dir(bundle)
    bundle_id = bundle.bundle_id  # of bundle.json as loaded, before the (long) export
    given = _check_images(calibration_images, "calibration_images") if calibration_images is not None else None
    views = bundle.tta.views

    calibration = calib_info = None
    parity_images: list[np.ndarray] | None = None
    parity_source = ""
    # metadata records of the calibration and parity images (fusion members): their own when the
    # validation table has them, else drawn from the members' encoders
    calibration_records: list[dict[str, Any]] | None = None
    parity_records: list[dict[str, Any]] | None = None
    if given is not None:
        calibration = given if int8 else None
        parity_images, parity_source = given[:n_parity], "given calibration images" + (" (in-sample for int8)" if int8 else "")
        calib_info = {"source": "given images", "n_images": len(given)} if int8 else None
    else:
        try:
            val, ids, records = validation_images(bundle, (n_calibration if int8 else 0) + n_parity, data_root=data_root, seed=seed)
        except (SkinLesionError, OSError, ValueError) as e:
            if int8:
                raise OnnxError(
                    f"INT8 calibration needs images of the bundle's validation split, which cannot be loaded ({e}). "
                    "Give the dataset folder (--data-root) or calibration images."
                ) from None
            log.info("validation images unavailable (%s): parity measured on random images", e)
            parity_images, parity_source = _synthetic_images(n_parity, seed), "random uint8 images (validation split unavailable)"
        else:
            parity_images, parity_source, parity_records = val, "validation split", records
            if int8:
                k = min(n_calibration, max(1, len(val) - n_parity))
                calibration, held_out = val[:k], val[k:]
                calibration_records = records[:k]
                parity_images, parity_records = (held_out, records[k:]) if held_out else (val[:n_parity], records[:n_parity])
                parity_source += " (images not used for calibration)" if held_out else " (calibration images: in-sample for int8)"
                calib_info = {
                    "source": "validation split", "n_images": k, "image_ids": ids[:k], "sampling": f"classes in turn, seed {seed}"
                }
    records_source = "the validation images' own"
    if not any(v is not None for r in (parity_records or []) for v in r.values()):
        records_source = f"drawn from the fusion members' encoders (seed {seed}): the images come without metadata"
        drawn = synthetic_records(max(len(calibration or []), len(parity_images)), bundle.members, seed)  # type: ignore[arg-type]
        calibration_records = drawn[: len(calibration)] if calibration is not None else None
        parity_records = drawn[: len(parity_images)]  # type: ignore[arg-type]

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written export must not look valid
    stems: list[str] = []
    members = []
    for member in bundle.members:
        stem = file_stem(member.name)
        stem = stem if stem not in stems else f"{stem}-{len(stems)}"
        stems.append(stem)
        entry = _export_member(
            member, stem, out, views, opset, calibration, parity_images, calibration_records, parity_records,  # type: ignore[arg-type]
            share_weights=share_weights,
        )
        diff = entry["parity"]["fp32"]["max_abs_prob_diff"]
        log.info("%s: fp32 parity max |dp| = %.2e", member.name, diff)
        if not diff <= tolerance:
            raise OnnxError(
                f"Member {member.name!r}: ONNX fp32 probabilities differ from PyTorch by up to {diff:.3g} "
                f"(tolerance {tolerance:g}); {out / MANIFEST} was not written"
            )
        members.append(entry)

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bundle_id": bundle_id,
        "bundle_name": bundle.spec.name,
        "bundle_path": str(bundle.path) if bundle.path is not None else None,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "graph": GRAPH_NOTE + (SHARED_NOTE if share_weights else ""),
        "classes": list(bundle.classes),
        "tta_views": list(views),
        "opset": opset,
        "precisions": ["fp32", "int8"] if int8 else ["fp32"],
        "versions": _versions(),
        "parity": {
            "images": parity_source, "n_images": len(parity_images), "tolerance_fp32": tolerance,  # type: ignore[arg-type]
            "metadata": (
                f"fusion members measured with the metadata given ({records_source}) and missing"
                if any(metadata_dim(m.model) is not None for m in bundle.members) else None
            ),
        },
        "quantisation": {**QUANTISATION, "calibration_source": calib_info} if int8 else None,
        "members": members,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=json_default))
    tmp.replace(out / MANIFEST)
    return out
