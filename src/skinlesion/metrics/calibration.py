"""Calibration metrics: ECE, class-wise ECE, reliability curves, NLL and Brier score.

* Top-label expected calibration error and reliability diagrams: Guo et al., "On Calibration of
  Modern Neural Networks", ICML 2017 (bins ``(lo, hi]`` of the top probability).
* Class-wise ECE: Kull et al., "Beyond temperature scaling", NeurIPS 2019.
* Multi-class Brier score: Brier 1950 (sum over classes, range [0, 2]; equal to sklearn's
  multi-class ``brier_score_loss``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skinlesion.metrics.inputs import check_inputs

_STRATEGIES = ("uniform", "quantile")


def _check_bins(n_bins: Any, strategy: str = "uniform") -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"The 'n_bins' parameter must be a positive integer. Got {n_bins!r} instead.")
    if strategy not in _STRATEGIES:
        raise ValueError(f"The 'strategy' parameter must be one of {set(_STRATEGIES)}. Got {strategy!r} instead.")
    return int(n_bins)


def _edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def _binned(conf: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin (count, sum of confidence, sum of correctness); bin b is ``(edges[b], edges[b+1]]``.

    A confidence of exactly 0 falls in the first bin.
    """
    n_bins = edges.size - 1
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    return counts, conf_sum, acc_sum


def _ece_from(conf: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> float:
    counts, conf_sum, acc_sum = _binned(conf, correct, edges)
    return float(np.abs(acc_sum - conf_sum).sum() / conf.shape[0])


def top_label_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with uniform bins on validated arrays (fast path for the bootstrap)."""
    conf = p.max(axis=1)
    return _ece_from(conf, p.argmax(axis=1) == y, np.linspace(0.0, 1.0, n_bins + 1))


def expected_calibration_error(y_true: Any, probs: Any, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Top-label ECE (Guo et al. 2017): ``sum_b |acc_b - conf_b| * n_b / n``.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probs: class probabilities, shape ``(n, K)``.
        n_bins: number of confidence bins.
        strategy: ``"uniform"`` (equal-width bins on [0, 1]) or ``"quantile"`` (equal-mass bins).
    """
    n_bins = _check_bins(n_bins, strategy)
    y, p = check_inputs(y_true, probs)
    conf = p.max(axis=1)
    return _ece_from(conf, p.argmax(axis=1) == y, _edges(conf, n_bins, strategy))


def classwise_ece(y_true: Any, probs: Any, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Class-wise ECE (Kull et al. 2019): mean over classes of the ECE of ``probs[:, k]`` vs ``y == k``.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probs: class probabilities, shape ``(n, K)``.
        n_bins: number of bins per class.
        strategy: ``"uniform"`` or ``"quantile"``.
    """
    n_bins = _check_bins(n_bins, strategy)
    y, p = check_inputs(y_true, probs)
    values = [_ece_from(p[:, k], y == k, _edges(p[:, k], n_bins, strategy)) for k in range(p.shape[1])]
    return float(np.mean(values))


def reliability_curve(y_true: Any, probs: Any, n_bins: int = 15) -> dict:
    """Top-label reliability diagram data (Guo et al. 2017), JSON-serialisable.

    Returns:
        ``edges`` (n_bins + 1 floats), ``confidence`` and ``accuracy`` (mean per bin, ``None`` for
        an empty bin), ``counts`` (ints), ``n``, and ``ece`` (the uniform-bin top-label ECE).
    """
    n_bins = _check_bins(n_bins)
    y, p = check_inputs(y_true, probs)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts, conf_sum, acc_sum = _binned(conf, correct, edges)
    def bin_means(sums: np.ndarray) -> list[float | None]:
        return [float(v / c) if c else None for v, c in zip(sums, counts)]

    return {
        "edges": edges.tolist(),
        "confidence": bin_means(conf_sum),
        "accuracy": bin_means(acc_sum),
        "counts": counts.astype(int).tolist(),
        "n": int(y.shape[0]),
        "ece": float(np.abs(acc_sum - conf_sum).sum() / y.shape[0]),
    }


def negative_log_likelihood(y_true: Any, probs: Any, eps: float = 1e-12) -> float:
    """Mean ``-log(max(p[y], eps))`` over images (cross-entropy of the predicted distribution)."""
    if not (isinstance(eps, (int, float)) and 0 < eps < 1):
        raise ValueError(f"The 'eps' parameter must be a float in (0, 1). Got {eps!r} instead.")
    y, p = check_inputs(y_true, probs)
    py = p[np.arange(y.shape[0]), y]
    return float(-np.log(np.maximum(py, eps)).mean())


def brier_score(y_true: Any, probs: Any) -> float:
    """Multi-class Brier score (Brier 1950): mean over images of ``sum_k (p_k - 1[y = k])^2``, in [0, 2]."""
    y, p = check_inputs(y_true, probs)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.shape[0]), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())
