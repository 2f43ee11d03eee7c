"""Run ensemble members over tables or images: every member with its own preprocessing, all TTA views
of a batch in one forward call (see :mod:`skinlesion.inference.tta`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from skinlesion.data.table import LesionTable
from skinlesion.ensemble.members import Member
from skinlesion.inference import default_device, table_view_logits, table_view_logits_with_hidden
from skinlesion.inference.tta import tta_logits
from skinlesion.models.fusion import MetadataFusionNet

#: Rows per forward call on the CPU (see tta_logits: large calls were slower there); None on GPUs.
CPU_MAX_ROWS = 32


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
    use_metadata: bool = True,
    engine: str | None = None,
) -> np.ndarray:
    """Logits of every TTA view for every image of ``table``: ``(N, V, K)`` float32, table row order.

    A metadata fusion member gets the table's metadata (``use_metadata=False``: hidden, all missing).
    ``engine``: PyTorch or ONNX Runtime (:func:`~skinlesion.inference.onnx_graph.table_engine`)."""
    dev = default_device(device)
    return table_view_logits(
        member.model, table, member.preprocessing, views, batch_size=batch_size, num_workers=num_workers,
        device=dev, max_rows=_max_rows(dev), use_metadata=use_metadata, engine=engine,
    )


def member_view_logits_with_hidden(
    member: Member,
    table: LesionTable,
    views: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    engine: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`member_view_logits` with the table's metadata and with it hidden, from one pass of the
    member's backbone (a fusion member runs its head twice; other members give the same array twice)."""
    dev = default_device(device)
    return table_view_logits_with_hidden(
        member.model, table, member.preprocessing, views, batch_size=batch_size, num_workers=num_workers,
        device=dev, max_rows=_max_rows(dev), engine=engine,
    )


def images_view_logits(
    member: Member,
    images: Sequence[np.ndarray],
    views: Sequence[str],
    *,
    device: str | torch.device | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> np.ndarray:
    """``(N, V, K)`` logits for in-memory RGB uint8 images (any size; resized by the member's preprocessing).

    ``metadata``: one record per image like ``{"age": 55, "sex": "male", "site": "back"}`` (keys may be
    absent), used by metadata fusion members and ignored by the others; ``None``: all missing.
    """
    if metadata is not None and len(metadata) != len(images):
        raise ValueError(
            f"The 'metadata' parameter must hold one record per image ({len(images)}). Got {len(metadata)} instead."
        )
    dev = default_device(device)
    model = member.model.to(dev).eval()
    x = member.preprocess(images, dev)
    meta = model.encode_metadata(metadata, len(images)) if isinstance(model, MetadataFusionNet) else None
    with torch.inference_mode():
        return tta_logits(model, x, views, max_rows=_max_rows(dev), meta=meta).cpu().numpy()


def out_of_fold_view_logits(
    members: Sequence[Member],
    member_folds: Sequence[int],
    table: LesionTable,
    row_folds: np.ndarray,
    views: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    use_metadata: bool = True,
) -> np.ndarray:
    """Cross-fitted logits ``(N, V, K)``: each row of ``table`` predicted only by the member that did
    not train on it (the member whose fold is the row's fold, ``row_folds``)."""
    return _out_of_fold(
        members, member_folds, table, row_folds, views, batch_size=batch_size, num_workers=num_workers,
        device=device, use_metadata=use_metadata, hidden_too=False,
    )[0]


def out_of_fold_view_logits_with_hidden(
    members: Sequence[Member],
    member_folds: Sequence[int],
    table: LesionTable,
    row_folds: np.ndarray,
    views: Sequence[str],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`out_of_fold_view_logits` with the table's metadata and with it hidden, from one pass of
    each member's backbone (:func:`member_view_logits_with_hidden`)."""
    given, hidden = _out_of_fold(
        members, member_folds, table, row_folds, views, batch_size=batch_size, num_workers=num_workers,
        device=device, use_metadata=True, hidden_too=True,
    )
    return given, hidden


def _out_of_fold(
    members: Sequence[Member], member_folds: Sequence[int], table: LesionTable, row_folds: np.ndarray,
    views: Sequence[str], *, batch_size: int, num_workers: int, device: str | torch.device | None,
    use_metadata: bool, hidden_too: bool,
) -> tuple[np.ndarray, ...]:
    row_folds = np.asarray(row_folds)
    if row_folds.shape != (len(table),):
        raise ValueError(f"The 'row_folds' parameter must hold one fold per table row ({len(table)}). Got shape {row_folds.shape}.")
    uncovered = sorted(set(row_folds.tolist()) - set(member_folds))
    if uncovered:
        raise ValueError(f"Rows of fold(s) {uncovered} have no member trained without them (member folds {list(member_folds)}).")
    outs = tuple(np.zeros((len(table), len(views), len(table.classes)), dtype=np.float32) for _ in range(1 + hidden_too))
    for m, f in zip(members, member_folds, strict=True):
        rows = row_folds == f
        if not rows.any():
            continue
        kw = {"batch_size": batch_size, "num_workers": num_workers, "device": device}
        if hidden_too:
            parts: tuple[np.ndarray, ...] = member_view_logits_with_hidden(m, table.subset(rows), views, **kw)
        else:
            parts = (member_view_logits(m, table.subset(rows), views, use_metadata=use_metadata, **kw),)
        for out, part in zip(outs, parts, strict=True):
            out[rows] = part
    return outs
