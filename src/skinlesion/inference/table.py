"""Batched inference of one model over a table, with the model's own preprocessing (all TTA views of a
batch in one forward call, :mod:`skinlesion.inference.tta`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from skinlesion.data.loader import LesionDataset
from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import preprocessing_transform
from skinlesion.inference.onnx_graph import ENGINE_ENV, OnnxGraphError, OrtForward, table_engine
from skinlesion.inference.tta import forward_views, tta_logits, tta_logits_with_hidden

log = logging.getLogger(__name__)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def table_view_logits(
    model: torch.nn.Module,
    table: LesionTable,
    preprocessing: dict[str, Any],
    views: Sequence[str] = ("identity",),
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    max_rows: int | None = None,
    use_metadata: bool = True,
    engine: str | None = None,
) -> np.ndarray:
    """Logits of every TTA view (:mod:`skinlesion.inference.tta`) for every image of ``table``:
    ``(N, V, K)`` float32 in table row order; ``max_rows`` as in :func:`~skinlesion.inference.tta.tta_logits`.

    A metadata fusion model (:mod:`skinlesion.models.fusion`) gets the table's age, sex and site,
    the same for every view; ``use_metadata=False`` hides them (all missing). Other models ignore it.

    ``engine``: ``torch``, ``onnx`` (ONNX Runtime, CPU) or ``auto``; None: the
    ``SKINLESION_TABLE_ENGINE`` environment variable, else ``auto``
    (:func:`~skinlesion.inference.onnx_graph.table_engine`).
    """
    return _table_pass(
        model, table, preprocessing, views, batch_size=batch_size, num_workers=num_workers, device=device,
        max_rows=max_rows, use_metadata=use_metadata, hidden_too=False, engine=engine,
    )[0]


def table_view_logits_with_hidden(
    model: torch.nn.Module,
    table: LesionTable,
    preprocessing: dict[str, Any],
    views: Sequence[str] = ("identity",),
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    max_rows: int | None = None,
    engine: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`table_view_logits` with the table's metadata and with it hidden, ``(N, V, K)`` each, from
    one pass over the images: a metadata fusion model runs its backbone once per view and its fusion
    head twice (:func:`~skinlesion.inference.tta.tta_logits_with_hidden`); any other model ignores
    metadata, so both arrays are its one result. ``engine`` as in :func:`table_view_logits` (ONNX
    Runtime gives the pooled image features beside the logits, and the fusion head runs on them again
    with the metadata missing)."""
    return _table_pass(  # type: ignore[return-value]
        model, table, preprocessing, views, batch_size=batch_size, num_workers=num_workers, device=device,
        max_rows=max_rows, use_metadata=True, hidden_too=True, engine=engine,
    )


def _table_pass(
    model: torch.nn.Module, table: LesionTable, preprocessing: dict[str, Any], views: Sequence[str], *,
    batch_size: int, num_workers: int, device: str | torch.device | None, max_rows: int | None,
    use_metadata: bool, hidden_too: bool, engine: str | None = None,
) -> tuple[np.ndarray, ...]:
    device = default_device(device)
    chosen = table_engine(engine, device, len(table) * len(views))
    kw = {"batch_size": batch_size, "num_workers": num_workers, "device": device, "max_rows": max_rows,
          "use_metadata": use_metadata, "hidden_too": hidden_too}
    if chosen == "torch":
        return _run_table(model, table, preprocessing, views, forward=None, **kw)
    try:
        forward = OrtForward(model.to(device).eval(), rows=max_rows or batch_size)
        return _run_table(model, table, preprocessing, views, forward=forward, **kw)
    except OnnxGraphError as e:
        if (engine or os.environ.get(ENGINE_ENV)) == "onnx":  # asked for, not chosen by auto
            raise
        log.warning("%s; this table pass runs in PyTorch instead", e)
        return _run_table(model, table, preprocessing, views, forward=None, **kw)


def _run_table(
    model: torch.nn.Module, table: LesionTable, preprocessing: dict[str, Any], views: Sequence[str], *,
    batch_size: int, num_workers: int, device: torch.device, max_rows: int | None, use_metadata: bool,
    hidden_too: bool, forward: OrtForward | None,
) -> tuple[np.ndarray, ...]:
    """The pass itself: PyTorch (``forward`` None) or ONNX Runtime (``forward``)."""
    from skinlesion.models.fusion import MetadataFusionNet, table_metadata

    tf = preprocessing_transform(preprocessing)
    metadata = table_metadata(model, table, use=use_metadata)
    dataset = LesionDataset(table, tf, metadata=metadata)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = model.to(device).eval()
    chunks: list[tuple[np.ndarray, ...]] = []
    # no_grad for ONNX Runtime: its graphs are exported on first use, 2x slower under inference_mode
    with torch.inference_mode() if forward is None else torch.no_grad():
        for batch in loader:  # shuffle=False: batches come in table row order
            x = batch[0].to(device, non_blocking=True)
            meta = batch[3].to(device, non_blocking=True) if metadata is not None else None
            if forward is not None:
                pair = hidden_too and isinstance(model, MetadataFusionNet)
                z = _ort_views(model, forward, x, views, meta, max_rows, hidden=pair)
                chunks.append(z if pair else (z[0], z[0]) if hidden_too else z)
            elif hidden_too and meta is not None:
                pair = tta_logits_with_hidden(model, x, views, meta=meta, max_rows=max_rows)
                chunks.append(tuple(z.cpu().numpy() for z in pair))
            else:
                z = tta_logits(model, x, views, max_rows=max_rows, meta=meta).cpu().numpy()
                chunks.append((z, z) if hidden_too else (z,))
    if not chunks:
        empty = np.zeros((0, len(views), 0), dtype=np.float32)
        return (empty, empty.copy()) if hidden_too else (empty,)
    return tuple(np.concatenate(parts) for parts in zip(*chunks, strict=True))


def _ort_views(
    model: torch.nn.Module, forward: OrtForward, x: torch.Tensor, views: Sequence[str], meta: torch.Tensor | None,
    max_rows: int | None, *, hidden: bool,
) -> tuple[np.ndarray, ...]:
    """View logits ``(N, V, K)`` of a batch by ONNX Runtime; ``hidden`` (a fusion model): also with the
    metadata missing, from the fusion head on the graph's pooled image features (no second pass)."""

    def run(rows: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        logits, features = forward(rows, None if meta is None else meta.repeat(n_views, 1))
        return [logits, model.head_from_pooled(features).float()] if hidden else [logits]  # type: ignore[operator]

    return tuple(z.numpy() for z in forward_views(x, views, max_rows, run))


def predict_table(
    model: torch.nn.Module,
    table: LesionTable,
    preprocessing: dict[str, Any],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Softmax probabilities, shape (N, K), in table row order (one view, no TTA)."""
    logits = table_view_logits(
        model, table, preprocessing, batch_size=batch_size, num_workers=num_workers, device=device
    )[:, 0]
    if logits.shape[0] == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()
