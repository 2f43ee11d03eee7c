"""A model's forward pass as an ONNX graph, and ONNX Runtime for the long table passes on the CPU.

:func:`onnx_program` exports a model (``model(x)`` or a fusion model's ``model(x, meta)``) with two
outputs, the logits and the pooled image features of the same pass
(:func:`~skinlesion.models.fusion.logits_and_image_features`); the bundle export
(:mod:`skinlesion.delivery.onnx_export`) writes these graphs to files, and :class:`OrtForward`
builds them in memory to run a table.

Why a table pass uses ONNX Runtime: building, calibrating and evaluating a bundle run every member
over thousands of images and every TTA view (the default recipe: 58k passes to build, 51k to
evaluate). On a 2-core CPU without a GPU an EfficientNet-Lite0 at 144x192 took 23 ms an image in
eager PyTorch (one thread, batches of 8-32, freed memory kept), 20 ms with channels_last, and 8 ms
in ONNX Runtime, which folds batch norms into convolutions and fuses activations at load time.
The export (static batch) costs about 7 s per input shape there (two shapes when rotated views
swap the axes), so :func:`table_engine` picks ONNX Runtime for long passes on the CPU (``auto``: at
least :data:`AUTO_MIN_PASSES` image-views, where the export has paid for itself); the environment
variable :data:`ENGINE_ENV` (``torch``, ``onnx`` or ``auto``) chooses for every table pass of a
process. The graphs are checked against the PyTorch model on the first rows run at each input
shape (:data:`ATOL`, :data:`RTOL`): a mismatch, or a model the exporter cannot take, is an error
under ``onnx`` and falls back to PyTorch, with a warning, under ``auto``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from skinlesion.errors import SkinLesionError
from skinlesion.models.fusion import MetadataFusionNet, logits_and_image_features

INPUT = "input"
METADATA = "metadata"
OUTPUT = "logits"
#: The graphs' second output: pooled image features (see :func:`~skinlesion.models.fusion.logits_and_image_features`).
FEATURES = "features"
DEFAULT_OPSET = 20

ENGINES = ("auto", "torch", "onnx")
ENGINE_ENV = "SKINLESION_TABLE_ENGINE"
#: ``auto`` runs a table pass in ONNX Runtime from this many image-views (rows x TTA views) on the CPU.
AUTO_MIN_PASSES = 2048
#: How far a graph's logits may be from the PyTorch model's on the rows it is checked on.
ATOL = 1e-3
RTOL = 1e-3
CHECK_ROWS = 2


class OnnxGraphError(SkinLesionError, ValueError):
    """A model that could not be exported, or whose graph does not compute what the model does."""


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Keep third-party INFO chatter (onnxscript passes, one line per adjusted weight scale in
    onnxruntime.quantization) out of the CLI's log: loggers without a level follow the root's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def metadata_dim(model: torch.nn.Module) -> int | None:
    """Length ``D`` of a fusion model's encoded metadata (its graph's second input), None otherwise."""
    return int(model.missing_metadata.shape[0]) if isinstance(model, MetadataFusionNet) else None


def _logits_and_features(
    self: torch.nn.Module, x: torch.Tensor, meta: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return logits_and_image_features(self, x, meta)


def with_features(model: torch.nn.Module) -> torch.nn.Module:
    """A shallow twin of ``model`` (same modules, parameters and names) whose ``forward`` returns the
    logits and the pooled image features of one pass: the graph's two outputs."""
    twin = copy.copy(model)
    cls = type(model)
    twin.__class__ = type(f"{cls.__name__}WithFeatures", (cls,), {"forward": _logits_and_features})
    return twin


def onnx_program(
    model: torch.nn.Module, shape: tuple[int, int], *, opset: int = DEFAULT_OPSET, meta_dim: int | None = None,
    optimize: bool = True, batch: int | None = None,
) -> Any:
    """``torch.onnx.export`` (torch.export-based) of ``model`` (eval mode, CPU) for inputs
    ``(batch, 3, *shape)``, static spatial axes; outputs ``"logits"`` and ``"features"``. ``batch``:
    None, a dynamic batch axis (what a bundle's files need); a number, that many rows (the export
    takes 2-3x less time without symbolic shapes: ~6 s instead of ~16 s for a Lite0). ``meta_dim``: a
    fusion model's metadata length ``D``, a second input ``"metadata"`` ``(batch, D)`` on the same
    batch axis. ``optimize``: the exporter's optimisation (it also folds batch norms into the
    convolutions). Returns the ``ONNXProgram``."""
    twin = with_features(model)
    rows = 2 if batch is None else int(batch)  # 2: a dynamic batch axis would be specialised by an example of 1
    example: tuple[torch.Tensor, ...] = (torch.zeros(rows, 3, *shape),)
    names = [INPUT]
    if meta_dim is not None:
        example += (model.missing_metadata.detach().cpu().float().expand(rows, meta_dim).clone(),)
        names.append(METADATA)
    dynamic = None if batch is not None else tuple({0: torch.export.Dim("batch", min=1, max=4096)} for _ in names)
    with warnings.catch_warnings(), quiet_root_logger(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # exporter chatter; parity is checked after export
        return torch.onnx.export(
            twin, example, input_names=names, output_names=[OUTPUT, FEATURES], opset_version=opset, dynamo=True,
            dynamic_shapes=dynamic, external_data=False, verbose=False, optimize=optimize,
        )


def providers() -> list[str]:
    """CUDA when ONNX Runtime has it, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]


def session_options(threads: int | None = None) -> Any:
    """``SessionOptions`` with ``threads`` intra-op threads (default ``torch.get_num_threads()``), all
    graph optimisations, sequential execution, errors-only logging."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    # idle intra-op threads sleep instead of spinning: between the many small runs of a prediction
    # (members x views) spinning threads take the cores from the preprocessing and from PyTorch
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def table_engine(engine: str | None, device: torch.device, passes: int) -> str:
    """``torch`` or ``onnx`` for a table pass of ``passes`` image-views on ``device``: ``engine``, else
    the :data:`ENGINE_ENV` environment variable, else ``auto`` (ONNX Runtime on the CPU from
    :data:`AUTO_MIN_PASSES` image-views; PyTorch on a GPU)."""
    chosen = engine or os.environ.get(ENGINE_ENV) or "auto"
    if chosen not in ENGINES:
        where = "The 'engine' parameter" if engine else f"The environment variable {ENGINE_ENV}"
        raise ValueError(f"{where} must be one of {ENGINES}. Got {chosen!r} instead.")
    if chosen == "onnx" and device.type != "cpu":
        raise ValueError(f"The onnx table engine runs on the CPU; got device {device}. Use 'torch' or 'auto' there.")
    if chosen == "auto":
        return "onnx" if device.type == "cpu" and passes >= AUTO_MIN_PASSES else "torch"
    return chosen


class OrtForward:
    """``model``'s logits and pooled image features ``(logits, features)`` by ONNX Runtime, one
    in-memory graph per input shape, exported and checked against the model on its first use.

    The graphs take ``rows`` rows per run (a static batch: a faster export); a call with fewer is
    padded, one with more runs in parts. A fusion model takes its encoded metadata (None: all
    missing). The model must stay unchanged while this object is used (the graphs hold a copy of
    its weights)."""

    def __init__(self, model: torch.nn.Module, *, rows: int = 32, threads: int | None = None) -> None:
        if rows < 1:
            raise ValueError(f"The 'rows' parameter must be a positive integer. Got {rows!r} instead.")
        self.model = model
        self.rows = int(rows)
        self.threads = threads
        self.meta_dim = metadata_dim(model)
        self._sessions: dict[tuple[int, int], Any] = {}

    def __call__(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        images = x.detach().cpu().float().contiguous().numpy()
        n, shape = len(images), (int(x.shape[-2]), int(x.shape[-1]))
        encoded = None
        if self.meta_dim is not None:
            m = self.model.missing_metadata.expand(n, -1) if meta is None else meta
            encoded = m.detach().cpu().float().contiguous().numpy()
        session = self._sessions.get(shape)
        fresh = session is None
        if session is None:
            session = self._sessions[shape] = self._session(shape)
        parts: list[list[np.ndarray]] = [[], []]
        for start in range(0, n, self.rows):
            k = min(self.rows, n - start)
            feed = {INPUT: self._padded(images[start : start + k])}
            if encoded is not None:
                feed[METADATA] = self._padded(encoded[start : start + k])
            for part, out in zip(parts, session.run([OUTPUT, FEATURES], feed), strict=True):
                part.append(out[:k])
        logits, features = (np.concatenate(p) for p in parts)
        if fresh:
            self._check(shape, images[:CHECK_ROWS], None if encoded is None else encoded[:CHECK_ROWS], logits[:CHECK_ROWS])
        return torch.from_numpy(logits), torch.from_numpy(features)

    def _padded(self, a: np.ndarray) -> np.ndarray:
        if len(a) == self.rows:
            return a
        return np.concatenate([a, np.zeros((self.rows - len(a), *a.shape[1:]), dtype=a.dtype)])

    def _session(self, shape: tuple[int, int]) -> Any:
        try:
            import onnxruntime as ort

            proto = onnx_program(self.model, shape, meta_dim=self.meta_dim, batch=self.rows).model_proto
            return ort.InferenceSession(
                proto.SerializeToString(), sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # the exporter raises many types (ImportError without onnxruntime): no graph
            raise OnnxGraphError(
                f"{type(self.model).__name__} could not be exported to ONNX for inputs of size {shape}: {e}"
            ) from e

    def _check(self, shape: tuple[int, int], images: np.ndarray, meta: np.ndarray | None, got: np.ndarray) -> None:
        with torch.inference_mode():
            m = None if meta is None else torch.from_numpy(meta)
            want = logits_and_image_features(self.model, torch.from_numpy(images), m)[0].float().numpy()
        if not np.allclose(got, want, atol=ATOL, rtol=RTOL):
            raise OnnxGraphError(
                f"The ONNX graph of {type(self.model).__name__} for inputs of size {shape} gives logits up to "
                f"{float(np.abs(got - want).max()):.3g} away from PyTorch's (allowed {ATOL} + {RTOL} x |logit|)"
            )
