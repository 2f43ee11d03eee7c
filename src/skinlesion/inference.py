"""Batched inference of one model over a table, with the model's own preprocessing."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from skinlesion.data.loader import LesionDataset
from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import eval_transform


def predict_table(
    model: torch.nn.Module,
    table: LesionTable,
    preprocessing: dict[str, Any],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Softmax probabilities, shape (N, K), in table row order."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tf = eval_transform(
        tuple(preprocessing["input_size"]), preprocessing["mean"], preprocessing["std"], preprocessing["interpolation"]
    )
    loader = DataLoader(LesionDataset(table, tf), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = model.to(device).eval()
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for x, _, _ in loader:  # shuffle=False: batches come in table row order
            logits = model(x.to(device, non_blocking=True)).float()
            chunks.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
