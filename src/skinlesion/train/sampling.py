"""Class-balancing sampler and stratified subsampling."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def balanced_sampler(labels: np.ndarray, power: float = 0.5, seed: int = 0) -> WeightedRandomSampler:
    """Sample images with probability proportional to ``(1 / class frequency) ** power``.

    One epoch draws ``len(labels)`` images with replacement. Note: use it *or* a class-weighted loss
    with full power, not both, or rare classes are over-corrected.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels).astype(np.float64)
    per_image = (1.0 / counts[labels]) ** power
    g = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(per_image, dtype=torch.double), num_samples=len(labels), generator=g)


def stratified_subsample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-stratified subsample of size ~``n`` (every present class keeps >= 1 image)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(n * len(idx) / len(labels))))
        keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))
