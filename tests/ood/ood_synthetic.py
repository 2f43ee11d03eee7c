"""Synthetic features and logits shared by the OOD tests: in-distribution clusters and shifted ones."""

from __future__ import annotations

import numpy as np

from skinlesion.ood.features import MemberFeatures

D, K = 16, 3


def in_dist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (n, D): K clusters in the first half of the dimensions; peaked logits (n, K); labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    centres = np.zeros((K, D))
    centres[np.arange(K), np.arange(K)] = 4.0
    x = centres[y] + rng.normal(0, 0.5, (n, D)) * (np.arange(D) < D // 2)
    logits = rng.normal(0, 0.3, (n, K))
    logits[np.arange(n), y] += 6.0
    return x, logits, y


def shifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features pointing elsewhere (the second half of the dimensions) and flat, small logits."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.5, (n, D)) + 4.0 * (np.arange(D) >= D // 2)
    return x, rng.normal(0, 0.3, (n, K))


def member_outputs(x: np.ndarray, z: np.ndarray, names: tuple[str, ...] = ("a", "b")) -> list[MemberFeatures]:
    """The same outputs for every member name, slightly different per member."""
    return [MemberFeatures(n, (x * (1 + 0.01 * i)).astype(np.float32), (z + 0.01 * i).astype(np.float32)) for i, n in enumerate(names)]
