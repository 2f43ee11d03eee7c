"""Losses for imbalanced dermoscopy classes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_weights(labels: np.ndarray, n_classes: int, power: float = 0.5) -> torch.Tensor:
    """Per-class weights ``(1 / frequency) ** power`` normalised to mean 1 over present classes.

    ``power=1`` is inverse frequency, ``0.5`` its square root (milder; less variance on rare classes).
    Absent classes get weight 0 so they cannot dominate a batch that never contains them.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    w = np.zeros(n_classes)
    present = counts > 0
    w[present] = (counts[present].sum() / counts[present]) ** power
    w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    ``FL = -alpha_y (1 - p_y)^gamma log p_y``; with gamma=0 it equals (weighted) cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(logp, target, reduction="none")
        if self.label_smoothing > 0:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(dim=1)
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - pt).pow(self.gamma) * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum().clamp_min(1e-12)
        return loss.mean()


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021, "Long-tail learning via logit adjustment").

    ``CE(z + tau * log prior, y)``: the training-set class prior is added to the logits inside the loss
    only, so the network's own logits ``z`` learn the balanced (prior-free) posterior, which is what
    balanced accuracy rewards; unlike class weights it does not scale rare classes' gradients up.
    ``tau=0`` is plain cross-entropy. A class absent from training gets a prior of one image.
    """

    def __init__(self, labels: np.ndarray, n_classes: int, tau: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
        counts = np.maximum(counts, 1.0)
        self.tau = float(tau)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("offset", torch.tensor(tau * np.log(counts / counts.sum()), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.offset, target, label_smoothing=self.label_smoothing)


LOSSES = ("ce", "weighted_ce", "focal", "logit_adjusted")


def build_loss(
    kind: str, labels: np.ndarray, n_classes: int, *, power: float, gamma: float, label_smoothing: float,
    tau: float = 1.0,
) -> nn.Module:
    """``ce`` (plain), ``weighted_ce`` (class-weighted), ``focal`` (class-weighted focal) or
    ``logit_adjusted`` (prior added to the logits in the loss, strength ``tau``)."""
    if kind == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if kind == "logit_adjusted":
        return LogitAdjustedLoss(labels, n_classes, tau=tau, label_smoothing=label_smoothing)
    weight = class_weights(labels, n_classes, power)
    if kind == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(gamma=gamma, weight=weight, label_smoothing=label_smoothing)
    raise ValueError(f"The 'train.loss' parameter must be one of {LOSSES}. Got {kind!r} instead.")
