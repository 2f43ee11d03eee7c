"""Which score should send a case to a clinician: review scores compared on held-out predictions.

Every score ranks the same cases (one decision per image: the argmax of the bundle's probabilities),
so they are compared paired, on the same images, with lesion-bootstrap intervals (images of one
lesion resampled together):

* AURC and E-AURC (Geifman et al., ICLR 2019): the area under the selective-risk curve, lower is
  better; E-AURC subtracts the area an oracle ranking would reach.
* errors caught at a fixed review rate: flag the ``rate`` least confident cases; the fraction of
  all errors among them (higher is better).
* each score's difference from a reference score (``max_prob`` by default), with its interval.

:func:`compare_scores` takes any named score arrays; ``higher_is_confident`` names the scores that
grow with confidence (``max_prob``). See ``bench/risk_coverage.py --compare`` for the sources
(members x views, MC dropout, the out-of-distribution gate).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from skinlesion.metrics.risk_coverage import aurc, optimal_aurc


def _uncertainty(score: np.ndarray, confident: bool) -> np.ndarray:
    return -score if confident else score


def errors_caught(scores: np.ndarray, correct: np.ndarray, rate: float, *, higher_is_confident: bool) -> float:
    """Fraction of all errors among the ``rate`` least confident cases (ties broken by order; nan without errors)."""
    errors = ~np.asarray(correct, dtype=bool)
    if not errors.any():
        return float("nan")
    n_flag = int(round(rate * errors.size))
    order = np.argsort(-_uncertainty(np.asarray(scores, dtype=float), higher_is_confident), kind="stable")
    return float(errors[order[:n_flag]].sum() / errors.sum())


def _metrics(scores: Mapping[str, np.ndarray], correct: np.ndarray, rate: float, confident: Collection[str]) -> dict[str, np.ndarray]:
    best = optimal_aurc(correct)
    out: dict[str, np.ndarray] = {}
    for name, s in scores.items():
        a = aurc(s, correct, higher_is_confident=name in confident)
        out[name] = np.asarray([a, a - best, errors_caught(s, correct, rate, higher_is_confident=name in confident)])
    return out


def compare_scores(
    scores: Mapping[str, Any],
    correct: Any,
    groups: Any,
    *,
    higher_is_confident: Collection[str] = ("max_prob",),
    reference: str = "max_prob",
    rate: float = 0.2,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AURC, E-AURC and errors caught at review ``rate`` per score, each with a 95% lesion-bootstrap
    interval, and the paired difference from ``reference`` (negative AURC difference, positive
    errors-caught difference: better than the reference). ``best`` names the score of lowest AURC."""
    correct = np.asarray(correct, dtype=bool)
    groups = np.asarray(groups)
    arrays = {k: np.asarray(v, dtype=float) for k, v in scores.items()}
    for k, v in arrays.items():
        if v.shape != correct.shape:
            raise ValueError(f"Score {k!r} has shape {v.shape}; correct has {correct.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"Score {k!r} has {int((~np.isfinite(v)).sum())} non-finite values")
    if reference not in arrays:
        raise ValueError(f"The 'reference' parameter must name one of the scores {sorted(arrays)}. Got {reference!r} instead.")
    if not 0 < rate < 1:
        raise ValueError(f"The 'rate' parameter must be in (0, 1). Got {rate!r} instead.")
    point = _metrics(arrays, correct, rate, higher_is_confident)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(uniq.size)]
    rng = np.random.default_rng(seed)
    boot: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
    for _ in range(n_boot):
        rows = np.concatenate([members[g] for g in rng.integers(0, uniq.size, uniq.size)])
        c = correct[rows]
        if c.all():
            continue
        m = _metrics({k: v[rows] for k, v in arrays.items()}, c, rate, higher_is_confident)
        for k in arrays:
            boot[k].append(m[k])

    def ci(x: np.ndarray) -> list[float]:
        x = x[np.isfinite(x)]
        return [float(np.quantile(x, 0.025)), float(np.quantile(x, 0.975))] if x.size else [float("nan")] * 2

    out: dict[str, Any] = {}
    ref = np.asarray(boot[reference]) if boot[reference] else None
    for k in arrays:
        b = np.asarray(boot[k]) if boot[k] else None
        row: dict[str, Any] = {
            "aurc": float(point[k][0]), "aurc_ci": ci(b[:, 0]) if b is not None else None,
            "e_aurc": float(point[k][1]), "e_aurc_ci": ci(b[:, 1]) if b is not None else None,
            f"errors_caught_at_{rate:g}": float(point[k][2]), "errors_caught_ci": ci(b[:, 2]) if b is not None else None,
        }
        if k != reference and b is not None and ref is not None:
            row[f"aurc_minus_{reference}"] = float(point[k][0] - point[reference][0])
            row[f"aurc_minus_{reference}_ci"] = ci(b[:, 0] - ref[:, 0])
            row[f"errors_caught_minus_{reference}"] = float(point[k][2] - point[reference][2])
            row[f"errors_caught_minus_{reference}_ci"] = ci(b[:, 2] - ref[:, 2])
        out[k] = row
    return {
        "scores": out,
        "best": min(out, key=lambda k: out[k]["aurc"]),
        "n": int(correct.size),
        "n_lesions": int(uniq.size),
        "n_errors": int((~correct).sum()),
        "review_rate": rate,
        "reference": reference,
        "n_boot": int(n_boot),
        "higher_is_confident": sorted(set(higher_is_confident) & set(arrays)),
    }


__all__ = ["compare_scores", "errors_caught"]
