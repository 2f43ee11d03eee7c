"""Ensemble member weights: proportional to validation BACC (the reference systems), uniform, or
fitted on validation by minimum negative log-likelihood on the probability simplex (a convex
problem: the NLL of a mixture is convex in its weights; cf. stacking, Breiman 1996)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from skinlesion.calibration.temperature import mean_nll
from skinlesion.metrics.classification import balanced_accuracy

METHODS = ("bacc", "uniform", "nll")


def combine_log_probs(member_log_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Log of the weighted mixture ``sum_i w_i p_i``: ``(N, K)`` from M arrays ``(N, K)`` of log-probabilities."""
    lp = np.stack([np.asarray(m, dtype=np.float64) for m in member_log_probs])
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (lp.shape[0],):
        raise ValueError(f"Got {w.shape[0] if w.ndim else 0} weights for {lp.shape[0]} members")
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    return logsumexp(lp + logw[:, None, None], axis=0)


class EnsembleWeights:
    """Weights of M members from their validation log-probabilities.

    Parameters:
        method: ``bacc`` (w_i = BACC_i / sum_j BACC_j, BACC of each member's argmax on validation),
            ``uniform`` (1/M), or ``nll`` (minimum validation NLL, non-negative, sum 1).

    Learned attributes: ``weights_`` (M,), ``member_bacc_`` (M,), ``member_nll_`` (M,), ``nll_`` (the
    ensemble's validation NLL with ``weights_``), ``uniform_nll_``.
    """

    def __init__(self, method: str = "bacc") -> None:
        self.method = method

    def fit(self, member_log_probs: Sequence[Any], y: Any) -> EnsembleWeights:
        if self.method not in METHODS:
            raise ValueError(f"The 'method' parameter must be one of {METHODS}. Got {self.method!r} instead.")
        lps = [np.asarray(m, dtype=np.float64) for m in member_log_probs]
        if not lps:
            raise ValueError("The 'member_log_probs' parameter is empty: an ensemble needs at least one member.")
        shapes = {m.shape for m in lps}
        if len(shapes) != 1 or lps[0].ndim != 2:
            raise ValueError(f"Every member must give log-probabilities of one shape (N, K). Got shapes {sorted(shapes)}.")
        labels = np.asarray(y)
        if labels.shape != (lps[0].shape[0],):
            raise ValueError(f"The 'y' parameter must hold {lps[0].shape[0]} labels. Got shape {labels.shape}.")
        k = lps[0].shape[1]
        m = len(lps)
        self.member_bacc_ = np.array([balanced_accuracy(labels, lp.argmax(1), k) for lp in lps])
        self.member_nll_ = np.array([mean_nll(lp, labels) for lp in lps])
        uniform = np.full(m, 1.0 / m)
        self.uniform_nll_ = mean_nll(combine_log_probs(lps, uniform), labels)
        if self.method == "uniform" or m == 1:
            w = uniform
        elif self.method == "bacc":
            bacc = np.nan_to_num(self.member_bacc_, nan=0.0)
            if bacc.sum() <= 0:
                raise ValueError("Every member has validation BACC 0 (or undefined): BACC weights are undefined.")
            w = bacc / bacc.sum()
        else:
            stacked = np.stack(lps)[:, np.arange(labels.shape[0]), labels]  # (M, N) log p_i(y_n)

            def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
                w = softmax(theta)
                lp = logsumexp(stacked + np.log(w)[:, None], axis=0)
                resp = np.exp(stacked + np.log(w)[:, None] - lp)  # (M, N) responsibilities
                grad_w = -resp.mean(axis=1) / w
                grad_theta = w * (grad_w - np.dot(w, grad_w))
                return float(-lp.mean()), grad_theta

            res = minimize(objective, np.zeros(m), jac=True, method="L-BFGS-B")
            w = softmax(res.x)
            w[w < 1e-6] = 0.0
            w = w / w.sum()
        self.weights_ = w
        self.nll_ = mean_nll(combine_log_probs(lps, w), labels)
        return self
