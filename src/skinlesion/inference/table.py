"""Batched inference of one model over a table, with the model's own preprocessing (all TTA views of a
batch in one forward call, :mod:`skinlesion.inference.tta`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from skinlesion.data.loader import LesionDataset
from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import preprocessing_transform
from skinlesion.inference.tta import tta_logits, tta_logits_with_hidden


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
) -> np.ndarray:
    """Logits of every TTA view (:mod:`skinlesion.inference.tta`) for every image of ``table``:
    ``(N, V, K)`` float32 in table row order; ``max_rows`` as in :func:`~skinlesion.inference.tta.tta_logits`.

    A metadata fusion model (:mod:`skinlesion.models.fusion`) gets the table's age, sex and site,
    the same for every view; ``use_metadata=False`` hides them (all missing). Other models ignore it.
    """
    return _table_pass(
        model, table, preprocessing, views, batch_size=batch_size, num_workers=num_workers, device=device,
        max_rows=max_rows, use_metadata=use_metadata, hidden_too=False,
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
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`table_view_logits` with the table's metadata and with it hidden, ``(N, V, K)`` each, from
    one pass over the images: a metadata fusion model runs its backbone once per view and its fusion
    head twice (:func:`~skinlesion.inference.tta.tta_logits_with_hidden`); any other model ignores
    metadata, so both arrays are its one result."""
    return _table_pass(  # type: ignore[return-value]
        model, table, preprocessing, views, batch_size=batch_size, num_workers=num_workers, device=device,
        max_rows=max_rows, use_metadata=True, hidden_too=True,
    )


def _table_pass(
    model: torch.nn.Module, table: LesionTable, preprocessing: dict[str, Any], views: Sequence[str], *,
    batch_size: int, num_workers: int, device: str | torch.device | None, max_rows: int | None,
    use_metadata: bool, hidden_too: bool,
) -> tuple[np.ndarray, ...]:
    from skinlesion.models.fusion import table_metadata

    device = default_device(device)
    tf = preprocessing_transform(preprocessing)
    metadata = table_metadata(model, table, use=use_metadata)
    dataset = LesionDataset(table, tf, metadata=metadata)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = model.to(device).eval()
    chunks: list[tuple[np.ndarray, ...]] = []
    with torch.inference_mode():
        for batch in loader:  # shuffle=False: batches come in table row order
            x = batch[0].to(device, non_blocking=True)
            meta = batch[3].to(device, non_blocking=True) if metadata is not None else None
            if hidden_too and meta is not None:
                pair = tta_logits_with_hidden(model, x, views, meta=meta, max_rows=max_rows)
                chunks.append(tuple(z.cpu().numpy() for z in pair))
            else:
                z = tta_logits(model, x, views, max_rows=max_rows, meta=meta).cpu().numpy()
                chunks.append((z, z) if hidden_too else (z,))
    if not chunks:
        empty = np.zeros((0, len(views), 0), dtype=np.float32)
        return (empty, empty.copy()) if hidden_too else (empty,)
    return tuple(np.concatenate(parts) for parts in zip(*chunks, strict=True))


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
