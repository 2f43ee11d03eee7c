"""Run ensemble members over tables or images: every member with its own preprocessing, all TTA views
of a batch in one forward call (see :mod:`skinlesion.ensemble.tta`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from skinlesion.data.loader import LesionDataset
from skinlesion.data.table import LesionTable
from skinlesion.ensemble.members import Member
from skinlesion.ensemble.tta import tta_logits

#: Rows per forward call on the CPU (see tta_logits: large calls were slower there); None on GPUs.
CPU_MAX_ROWS = 32


def default_device(device: str | torch.device | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _max_rows(dev: torch.device) -> int | None:
    return CPU_MAX_ROWS if dev.type == "cpu" else None


def member_view_logits(
    member: Member,
    table: LesionTable,
    views: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Logits of every TTA view for every image of ``table``: ``(N, V, K)`` float32, table row order."""
    dev = default_device(device)
    loader = DataLoader(LesionDataset(table, member.transform()), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = member.model.to(dev).eval()
    chunks: list[np.ndarray] = []
    with torch.inference_mode():
        for x, _, _ in loader:  # shuffle=False: batches come in table row order
            chunks.append(tta_logits(model, x.to(dev, non_blocking=True), views, max_rows=_max_rows(dev)).cpu().numpy())
    k = len(member.meta.get("classes", [])) or 0
    return np.concatenate(chunks) if chunks else np.zeros((0, len(views), k), dtype=np.float32)


def images_view_logits(
    member: Member, images: Sequence[np.ndarray], views: Sequence[str], *, device: str | torch.device | None = None
) -> np.ndarray:
    """``(N, V, K)`` logits for in-memory RGB uint8 images (any size; resized by the member's preprocessing)."""
    dev = default_device(device)
    model = member.model.to(dev).eval()
    with torch.inference_mode():
        return tta_logits(model, member.preprocess(images, dev), views, max_rows=_max_rows(dev)).cpu().numpy()
