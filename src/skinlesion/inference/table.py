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
from skinlesion.inference.tta import tta_logits


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
    from skinlesion.models.fusion import table_metadata

    device = default_device(device)
    tf = preprocessing_transform(preprocessing)
    metadata = table_metadata(model, table, use=use_metadata)
    dataset = LesionDataset(table, tf, metadata=metadata)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = model.to(device).eval()
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for batch in loader:  # shuffle=False: batches come in table row order
            x = batch[0].to(device, non_blocking=True)
            meta = batch[3].to(device, non_blocking=True) if metadata is not None else None
            chunks.append(tta_logits(model, x, views, max_rows=max_rows, meta=meta).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, len(views), 0), dtype=np.float32)


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
