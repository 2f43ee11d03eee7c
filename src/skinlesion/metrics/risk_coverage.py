"""Risk–coverage curves and the area under them (AURC, E-AURC).

* Selective classification: Geifman & El-Yaniv, "Selective Classification for Deep Neural
  Networks", NeurIPS 2017. A classifier abstains on the least confident cases; *coverage* is the
  fraction it keeps, *selective risk* the error rate on the kept cases.
* AURC and E-AURC: Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural
  Classifiers", ICLR 2019. ``AURC = (1/N) sum_{k=1..N} risk(k/N)`` over the N coverages reached by
  keeping the k most confident cases; the optimal AURC is that of a ranking that puts every error
  last (same errors, perfect ordering); E-AURC = AURC - optimal AURC isolates the ranking quality
  from the error rate.

Ties: cases with equal scores are kept or rejected together, so the curve has one point per
distinct score. In the AURC sum, coverages inside a tied group use the expectation over a random
order of the group (the cumulative error count grows linearly through the group), so the value does
not depend on how the input happens to be sorted.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_correct(correct: Any) -> np.ndarray:
    """Validate ``correct`` ``(N,)``: a non-empty 1-D array of booleans or 0/1 values."""
    c = np.asarray(correct)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"The 'correct' parameter must be a non-empty 1-D array. Got shape {c.shape} instead.")
    if c.dtype != bool:
        if not np.issubdtype(c.dtype, np.number) or not np.all(np.isin(c, (0, 1))):
            raise ValueError("The 'correct' parameter must hold booleans or 0/1 values.")
        c = c.astype(bool)
    return c


def check_scores_correct(scores: Any, correct: Any, scores_name: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate 1-D finite ``scores`` ``(N,)`` and boolean/0-1 ``correct`` ``(N,)``; N >= 1."""
    s = np.asarray(scores)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(
            f"The '{scores_name}' parameter must be a non-empty 1-D array. Got shape {s.shape} instead."
        )
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number) or not np.all(np.isfinite(s)):
        raise ValueError(
            f"The '{scores_name}' parameter must hold finite numbers. Got dtype {s.dtype} or non-finite values."
        )
    c = check_correct(correct)
    if c.shape != s.shape:
        raise ValueError(
            f"The 'correct' parameter must have one entry per score ({s.shape[0]}). Got {c.shape[0]} instead."
        )
    return s.astype(np.float64), c


def tie_groups(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of equal confidence, most confident first (validated inputs).

    Returns ``(values, sizes, errors)``, each ``(G,)``: the confidence of each group, its number of
    cases and its number of errors.
    """
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    wrong = ~correct[order]
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])
    sizes = np.diff(np.r_[starts, conf.size])
    errors = np.add.reduceat(wrong.astype(np.int64), starts)
    return conf[starts], sizes, errors


def _confidence(scores: Any, correct: Any, higher_is_confident: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(higher_is_confident, (bool, np.bool_)):
        raise ValueError(
            "The 'higher_is_confident' parameter must be True (confidence, e.g. max probability) or "
            f"False (uncertainty, e.g. entropy). Got {higher_is_confident!r} instead."
        )
    s, c = check_scores_correct(scores, correct)
    return (s if higher_is_confident else -s), c


def risk_coverage_curve(
    scores: Any, correct: Any, *, higher_is_confident: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selective risk against coverage (Geifman & El-Yaniv 2017).

    ``scores`` ``(N,)`` are confidences (``higher_is_confident=True``) or uncertainties (False);
    ``correct`` ``(N,)`` says whether each prediction is right. Returns ``(coverage, risk,
    thresholds)``, each ``(G,)`` for the G distinct scores, coverage increasing to 1: keeping the
    cases with ``score >= thresholds[i]`` (confidence) or ``score <= thresholds[i]`` (uncertainty)
    gives ``coverage[i]`` and error rate ``risk[i]`` on the kept cases. Equal scores are kept together.
    """
    conf, c = _confidence(scores, correct, higher_is_confident)
    values, sizes, errors = tie_groups(conf, c)
    kept = np.cumsum(sizes)
    coverage = kept / conf.size
    risk = np.cumsum(errors) / kept
    thresholds = values if higher_is_confident else -values
    return coverage, risk, thresholds


def aurc(scores: Any, correct: Any, *, higher_is_confident: bool) -> float:
    """Area under the risk–coverage curve, ``(1/N) sum_k risk(k/N)`` (Geifman et al. 2019).

    Inside a group of tied scores the expected risk over a random order is used. Range [0, 1];
    lower is better; 0 when every prediction is correct.
    """
    conf, c = _confidence(scores, correct, higher_is_confident)
    _, sizes, errors = tie_groups(conf, c)
    n = conf.size
    kept_before = np.cumsum(sizes) - sizes
    errors_before = np.cumsum(errors) - errors
    k = np.arange(1, n + 1)
    group = np.repeat(np.arange(sizes.size), sizes)
    expected_errors = errors_before[group] + (k - kept_before[group]) * errors[group] / sizes[group]
    return float(np.mean(expected_errors / k))


def optimal_aurc(correct: Any) -> float:
    """AURC of a perfect ranking (every error least confident) with the same errors (Geifman et al. 2019)."""
    c = check_correct(correct)
    n, n_right = c.size, int(c.sum())
    k = np.arange(n_right + 1, n + 1)
    return float(np.sum((k - n_right) / k) / n)


def excess_aurc(scores: Any, correct: Any, *, higher_is_confident: bool) -> float:
    """E-AURC = AURC - optimal AURC (Geifman et al. 2019): 0 for a perfect ranking, >= 0 always."""
    return aurc(scores, correct, higher_is_confident=higher_is_confident) - optimal_aurc(correct)


__all__ = ["aurc", "excess_aurc", "optimal_aurc", "risk_coverage_curve"]
