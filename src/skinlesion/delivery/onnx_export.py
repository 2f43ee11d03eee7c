"""Export a decision bundle's members to ONNX, optionally with static INT8 quantisation.

Each member becomes ``<member>.fp32.onnx``: the network only, input ``"input"`` ``(batch, 3, H, W)``
float32 resized and normalised as the member's ``preprocessing`` says, output ``"logits"``
``(batch, K)``, dynamic batch axis, static spatial axes (a non-square member whose TTA views swap
the axes also gets ``<member>.transposed.fp32.onnx`` for ``(W, H)``; see
:mod:`skinlesion.delivery.onnx_runtime`). Resizing, normalisation, TTA views, temperatures, member
weights, thresholds and the decision rule are *not* in the graphs: they stay in ``bundle.json``,
so both engines share one post-processing path.

``int8=True`` adds ``<member>.int8.onnx``: ONNX Runtime static quantisation in QDQ format (uint8
activations, int8 weights per output channel, MinMax ranges; Jacob et al. 2018, "Quantization and
Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"), calibrated on the
images each graph sees at inference (the member's preprocessing and the bundle's TTA views) from
the bundle's *validation* split, or on images the caller gives; never on test.

``onnx.json`` records the bundle it belongs to (``bundle_id``), every file's sha256, input sizes,
opset, precisions, the probability parity against PyTorch measured at export (all TTA views),
library versions and the calibration source. An fp32 graph whose probabilities differ from
PyTorch by more than ``tolerance`` is an error and no manifest is written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import skinlesion
from skinlesion._hashing import sha256_file
from skinlesion._json import json_default
from skinlesion.delivery.onnx_runtime import (
    FORMAT,
    FORMAT_VERSION,
    INPUT,
    MANIFEST,
    OUTPUT,
    OnnxError,
    default_onnx_dir,
    file_stem,
    graph_shapes,
    make_session,
    run_views,
    session_runner,
)
from skinlesion.ensemble.bundle import Bundle
from skinlesion.ensemble.members import Member
from skinlesion.ensemble.predict import CPU_MAX_ROWS, images_view_logits
from skinlesion.errors import SkinLesionError
from skinlesion.inference.tta import SWAPS_AXES, apply_view

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
MIN_OPSET = 18  # the opset of torch's ONNX function library
GRAPH_NOTE = (
    "Network only: input 'input' (batch, 3, H, W) float32, resized and normalised as the member's "
    "preprocessing in bundle.json says; output 'logits' (batch, K). Preprocessing, TTA views, "
    "temperatures, member weights, thresholds and the decision rule stay in bundle.json."
)
QUANTISATION = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "QUInt8 (asymmetric, per tensor)",
    "weights": "QInt8 (symmetric, per output channel)",
    "calibration": "MinMax",
    "reduce_range": False,
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
) -> tuple[list[np.ndarray], list[str]]:
    """``n`` images of the bundle's validation split (classes in turn, seeded) and their image ids."""
    from skinlesion.evaluation import load_bundle_split

    table = load_bundle_split(bundle, "val", data_root)
    idx = _stratified(table.labels(), n, seed)
    ids = table.frame["image_id"].astype(str).to_numpy()
    return [table.load_image(i) for i in idx], [str(ids[i]) for i in idx]


def _synthetic_images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(150, 200, 3), dtype=np.uint8) for _ in range(n)]


# -- one graph -------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Keep third-party INFO chatter (onnxscript passes, one line per adjusted weight scale in
    onnxruntime.quantization) out of the CLI's log: loggers without a level follow the root's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def export_graph(model: torch.nn.Module, shape: tuple[int, int], path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Export ``model`` (eval mode, CPU) for inputs ``(batch, 3, *shape)`` with a dynamic batch axis
    (torch.export-based exporter; spatial axes static, see :mod:`skinlesion.delivery.onnx_runtime`)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = torch.zeros(2, 3, *shape)  # batch 2: an example batch of 1 would be specialised
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")  # exporter chatter; parity is checked after export
        program = torch.onnx.export(
            model, (example,), input_names=[INPUT], output_names=[OUTPUT], opset_version=opset, dynamo=True,
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )
    program.save(str(path), external_data=False)
    check_graph(path, shape)


def check_graph(path: Path, shape: tuple[int, int]) -> None:
    """onnx.checker plus the input/output contract (names, dynamic batch, spatial shape)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [[d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] for t in (graph.input[0], graph.output[0])]
    ok = (
        [t.name for t in graph.input] == [INPUT] and [t.name for t in graph.output] == [OUTPUT]
        and isinstance(dims[0][0], str) and dims[0][1:] == [3, *shape] and isinstance(dims[1][0], str)
    )
    if not ok:
        raise OnnxError(
            f"{path}: expected input {INPUT!r} (batch, 3, {shape[0]}, {shape[1]}) and output {OUTPUT!r} (batch, K); got {dims}"
        )


def quantize_graph(fp32: Path, int8: Path, rows: np.ndarray, *, batch_size: int = 16) -> None:
    """Static QDQ INT8 quantisation of ``fp32`` calibrated on normalised input ``rows`` ``(R, 3, H, W)``."""
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
            self._batches = iter([{INPUT: rows[i : i + batch_size]} for i in range(0, len(rows), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + graph optimisation, as ORT recommends
        quantize_static(
            str(pre), str(int8), Rows(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
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


def _rows(member: Member, images: Sequence[np.ndarray], views: Sequence[str]) -> np.ndarray:
    with torch.inference_mode():
        x = member.preprocess(images, "cpu")
        return torch.cat([apply_view(x, v) for v in views], dim=0).contiguous().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def member_parity(
    member: Member, paths: dict[tuple[int, int], Path], views: Sequence[str], images: Sequence[np.ndarray],
    reference: np.ndarray | None = None,
) -> dict[str, Any]:
    """ONNX vs PyTorch on ``images`` through every view: max abs difference of probabilities and logits."""
    ref = images_view_logits(member, images, views, device="cpu") if reference is None else reference
    sessions = {s: make_session(p) for s, p in paths.items()}
    got = run_views(member.preprocess(images, "cpu"), views, lambda s: session_runner(sessions[s]), max_rows=CPU_MAX_ROWS)
    p_ref, p_got = _softmax(ref.astype(np.float64)), _softmax(got.astype(np.float64))
    return {
        "max_abs_prob_diff": float(np.abs(p_ref - p_got).max()),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
        "n_images": len(images),
        "n_views": len(views),
    }


def _record(path: Path) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _export_member(
    member: Member, stem: str, out: Path, views: Sequence[str], opset: int, calibration: list[np.ndarray] | None,
    parity_images: list[np.ndarray],
) -> dict[str, Any]:
    model = copy.deepcopy(member.model).cpu().eval()
    graphs, paths = [], {"fp32": {}, "int8": {}}
    for shape in graph_shapes(member.input_size, views):
        name = stem if shape == member.input_size else f"{stem}.transposed"
        shape_views = _views_of(shape, member, views)
        fp32 = out / f"{name}.fp32.onnx"
        log.info("exporting %s for input %s (views %s)", fp32.name, shape, ", ".join(shape_views))
        export_graph(model, shape, fp32, opset)
        files = {"fp32": _record(fp32)}
        paths["fp32"][shape] = fp32
        if calibration is not None:
            int8 = out / f"{name}.int8.onnx"
            log.info("quantising %s on %d calibration images x %d views", int8.name, len(calibration), len(shape_views))
            quantize_graph(fp32, int8, _rows(member, calibration, shape_views))
            files["int8"] = _record(int8)
            paths["int8"][shape] = int8
        graphs.append({"input_size": list(shape), "views": shape_views, "files": files})
    reference = images_view_logits(member, parity_images, views, device="cpu")
    parity = {p: member_parity(member, ps, views, parity_images, reference) for p, ps in paths.items() if ps}
    return {
        "name": member.name,
        "backbone": member.backbone,
        "weights_sha256": member.meta.get("weights_sha256"),
        "input_size": list(member.input_size),
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
    if given is not None:
        calibration = given if int8 else None
        parity_images, parity_source = given[:n_parity], "given calibration images" + (" (in-sample for int8)" if int8 else "")
        calib_info = {"source": "given images", "n_images": len(given)} if int8 else None
    else:
        try:
            val, ids = validation_images(bundle, (n_calibration if int8 else 0) + n_parity, data_root=data_root, seed=seed)
        except (SkinLesionError, OSError, ValueError) as e:
            if int8:
                raise OnnxError(
                    f"INT8 calibration needs images of the bundle's validation split, which cannot be loaded ({e}). "
                    "Give the dataset folder (--data-root) or calibration images."
                ) from None
            log.info("validation images unavailable (%s): parity measured on random images", e)
            parity_images, parity_source = _synthetic_images(n_parity, seed), "random uint8 images (validation split unavailable)"
        else:
            parity_images, parity_source = val, "validation split"
            if int8:
                k = min(n_calibration, max(1, len(val) - n_parity))
                calibration, held_out = val[:k], val[k:]
                parity_images = held_out or val[:n_parity]
                parity_source += " (images not used for calibration)" if held_out else " (calibration images: in-sample for int8)"
                calib_info = {
                    "source": "validation split", "n_images": k, "image_ids": ids[:k], "sampling": f"classes in turn, seed {seed}"
                }

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a half-written export must not look valid
    stems: list[str] = []
    members = []
    for member in bundle.members:
        stem = file_stem(member.name)
        stem = stem if stem not in stems else f"{stem}-{len(stems)}"
        stems.append(stem)
        entry = _export_member(member, stem, out, views, opset, calibration, parity_images)  # type: ignore[arg-type]
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
        "graph": GRAPH_NOTE,
        "classes": list(bundle.classes),
        "tta_views": list(views),
        "opset": opset,
        "precisions": ["fp32", "int8"] if int8 else ["fp32"],
        "versions": _versions(),
        "parity": {"images": parity_source, "n_images": len(parity_images), "tolerance_fp32": tolerance},  # type: ignore[arg-type]
        "quantisation": {**QUANTISATION, "calibration_source": calib_info} if int8 else None,
        "members": members,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=json_default))
    tmp.replace(out / MANIFEST)
    return out
