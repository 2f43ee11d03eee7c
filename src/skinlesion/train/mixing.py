"""Batch mixing for training: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019).

A mixed batch pairs every image with another of the same batch (a random permutation) and a weight
``lam``: mixup blends the two images, CutMix pastes a box of the partner into the image (``lam`` is
then the fraction of the image left unchanged, after the box is clipped to the image). The loss is
``lam * loss(logits, y) + (1 - lam) * loss(logits, y[perm])``, so any loss (class-weighted
cross-entropy, focal) keeps its class weights. Patient metadata, where the model uses it, is mixed
with the same weight as the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixedBatch:
    """A mixed batch: images (and metadata), the partner of each sample and the weight of the original."""

    x: torch.Tensor
    meta: torch.Tensor | None
    perm: torch.Tensor
    lam: float
    kind: str  # "mixup" or "cutmix"


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a box of area ``(1 - lam)`` of the image at a random centre,
    clipped to the image (so the area actually pasted can be smaller)."""
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(round(height * cut)), int(round(width * cut))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch - ch // 2, height)
    left, right = max(cx - cw // 2, 0), min(cx + cw - cw // 2, width)
    return top, bottom, left, right


def mix_batch(
    x: torch.Tensor,
    meta: torch.Tensor | None = None,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    rng: np.random.Generator,
) -> MixedBatch:
    """Mix the batch ``x`` ``(N, C, H, W)``: CutMix or mixup (one of the two, at even odds, when both
    alphas are positive), with ``lam ~ Beta(alpha, alpha)``; every random choice comes from ``rng``."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
    if x.ndim != 4:
        raise ValueError(f"mix_batch expects images (N, C, H, W); got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    perm = torch.from_numpy(rng.permutation(n)).to(x.device)
    if use_cutmix:
        top, bottom, left, right = cutmix_box(h, w, float(rng.beta(cutmix_alpha, cutmix_alpha)), rng)
        mixed = x.clone()
        mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        kind = "cutmix"
    else:
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        mixed = x * lam + x[perm] * (1.0 - lam)
        kind = "mixup"
    if meta is not None:
        meta = meta * lam + meta[perm] * (1.0 - lam)
    return MixedBatch(mixed, meta, perm, lam, kind)
