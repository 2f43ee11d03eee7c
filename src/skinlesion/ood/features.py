"""What out-of-distribution scores read: a member's pooled penultimate image features and its logits.

One backbone pass gives both. Models follow timm's contract: ``forward_features(x)`` gives the
feature maps, ``forward_head(maps, pre_logits=True)`` the pooled features. For a metadata fusion
member (:class:`~skinlesion.models.fusion.MetadataFusionNet`) the features are the backbone's pooled
**image** features, taken before the metadata embedding is joined (so the gate judges the image
alone), and the logits are those of the image with all metadata missing (``model(x)``), what a
caller who gives no metadata gets. Images go through the member's own preprocessing
(:func:`~skinlesion.data.transforms.preprocessing_transform`), one view, no TTA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from skinlesion._params import positive_int
from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import images_to_batch, preprocessing_transform
from skinlesion.inference import default_device
from skinlesion.models.fusion import logits_and_image_features


class Member(Protocol):
    """What a member must have here (:class:`skinlesion.ensemble.members.Member` has it): a name, an
    eval-mode model with timm's ``forward_features``/``forward_head``, and its preprocessing."""

    name: str
    model: nn.Module
    preprocessing: Any


@dataclass
class MemberFeatures:
    """One member's outputs for N images: ``features`` ``(N, D)`` and ``logits`` ``(N, K)``, float32."""

    member: str
    features: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, rows: np.ndarray) -> MemberFeatures:
        """The selected rows (an index array or a boolean mask)."""
        return MemberFeatures(self.member, self.features[rows], self.logits[rows])


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled image features ``(N, D)`` and image-only logits ``(N, K)`` of a normalised batch ``x``.

    Call under ``torch.inference_mode()`` with the model in eval mode.
    """
    logits, pooled = logits_and_image_features(model, x)
    return pooled, logits


def _check_images(images: Sequence[np.ndarray], start: int = 0) -> None:
    for i, im in enumerate(images, start):
        a = np.asarray(im)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
            raise ValueError(
                f"images[{i}] must be an RGB uint8 array (H, W, 3). Got dtype {a.dtype} and shape {a.shape} instead."
            )


def _run(
    members: Sequence[Member],
    n: int,
    load: Callable[[int], np.ndarray],
    batch_size: int,
    device: str | torch.device | None,
) -> list[MemberFeatures]:
    """Every member over images ``load(0..n-1)``, each image loaded once per batch."""
    positive_int("batch_size", batch_size)
    dev = default_device(device)
    transforms = [preprocessing_transform(m.preprocessing) for m in members]
    feats: list[list[np.ndarray]] = [[] for _ in members]
    logits: list[list[np.ndarray]] = [[] for _ in members]
    for m in members:  # moving a model walks all its modules (~6 ms for a Lite0 per call): only when needed
        if any(t.device != dev for t in m.model.parameters()):
            m.model.to(dev)
        if any(module.training for module in m.model.modules()):  # reading the flags is cheap; eval() is not (~2 ms)
            m.model.eval()
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = [load(i) for i in range(start, min(n, start + batch_size))]
            _check_images(batch, start)
            for j, (m, tf) in enumerate(zip(members, transforms, strict=True)):
                f, z = features_and_logits(m.model, images_to_batch(batch, tf).to(dev))
                feats[j].append(f.float().cpu().numpy())
                logits[j].append(z.float().cpu().numpy())
    out = []
    for j, m in enumerate(members):
        f = np.concatenate(feats[j]) if feats[j] else np.zeros((0, 0), np.float32)
        z = np.concatenate(logits[j]) if logits[j] else np.zeros((0, 0), np.float32)
        out.append(MemberFeatures(m.name, f.astype(np.float32, copy=False), z.astype(np.float32, copy=False)))
    return out


def image_features(
    members: Member | Sequence[Member],
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list[MemberFeatures]:
    """Features and logits of in-memory RGB uint8 images ``(H, W, 3)`` (any size), one entry per member."""
    members = [members] if hasattr(members, "model") else list(members)  # type: ignore[arg-type]
    if len(images) == 0:
        raise ValueError("The 'images' parameter holds no image.")
    return _run(members, len(images), lambda i: np.asarray(images[i]), batch_size, device)


def table_features(
    members: Member | Sequence[Member],
    table: LesionTable,
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list[MemberFeatures]:
    """Features and logits of the images of ``table`` (``rows``: these row positions only, in that
    order), one entry per member; images are read with :meth:`LesionTable.load_image`."""
    members = [members] if hasattr(members, "model") else list(members)  # type: ignore[arg-type]
    idx = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(table)):
        raise ValueError(f"The 'rows' parameter must hold row positions in [0, {len(table)}). Got {idx.min()}..{idx.max()} instead.")
    return _run(members, int(idx.size), lambda i: table.load_image(int(idx[i])), batch_size, device)


__all__ = ["MemberFeatures", "features_and_logits", "image_features", "logits_and_image_features", "table_features"]
