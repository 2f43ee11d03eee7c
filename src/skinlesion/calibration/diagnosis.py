"""The diagnosis: the most likely class under a rule fitted for balanced accuracy.

Balanced accuracy (BACC, the ISIC 2018 metric) is the mean per-class recall, i.e. the accuracy of a
population in which every class is equally frequent. With calibrated probabilities ``p`` and class
priors ``pi`` of the data they were calibrated on, the rule that maximises it is the Bayes rule after
a shift to uniform priors, ``argmax_k p_k / pi_k`` (Saerens et al., Neural Computation 14, 2002).
Real probabilities are only roughly calibrated per class, and a model trained with a class-weighted
loss has already moved part of the way; so the per-class log-weights ``b_k`` in

    diagnosis = argmax_k (log p_k + b_k)

are fitted directly for BACC on held-out (validation or out-of-fold) predictions, by coordinate
ascent from ``b = 0`` (argmax). BACC is piecewise constant in ``b``: each step takes the middle of
the best plateau, not its edge, so the rule does not sit on a validation-specific boundary.
:func:`cross_validated_gain` measures what the fit buys on rows it did not see (lesion-grouped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skinlesion.metrics.classification import balanced_accuracy

STEP = 0.05
LIMITS = (0.25, 0.5, 1.0, 2.0)
#: Where the coordinate ascent starts: the argmax (weights 0), or the prior shift ``-log pi_k`` (pi:
#: the fitting rows' class frequencies), right for probabilities calibrated to the data's priors
#: (e.g. with class biases) rather than to a class-weighted training loss.
STARTS = ("argmax", "prior")


def weight_grid(limit: float) -> np.ndarray:
    """Candidate log-weights ``-limit .. limit`` in steps of 0.05."""
    if not (isinstance(limit, (int, float)) and limit > 0):
        raise ValueError(f"The 'limit' parameter must be a positive number. Got {limit!r} instead.")
    n = int(round(limit / STEP))
    return np.round(np.arange(-n, n + 1) * STEP, 6)


def _check(probs: Any, y: Any | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"The 'probs' parameter must be an (N, K) array with K >= 2. Got shape {p.shape}.")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("The 'probs' parameter must hold finite, non-negative probabilities.")
    if y is None:
        return p, None
    t = np.asarray(y)
    if t.shape != (p.shape[0],):
        raise ValueError(f"The 'y' parameter must hold {p.shape[0]} labels. Got shape {t.shape}.")
    if t.size and (t.min() < 0 or t.max() >= p.shape[1]):
        raise ValueError(f"The 'y' parameter must hold class indices in 0..{p.shape[1] - 1}.")
    return p, t.astype(np.int64)


class BalancedDiagnosis:
    """Per-class log-weights fitted for BACC (scikit-learn style: ``fit`` returns self).

    Parameters:
        max_passes: coordinate-ascent passes over the classes (stops earlier when a pass changes nothing).
        limit: each log-weight stays in ``[-limit, limit]`` (steps of 0.05); smaller limits overfit less.

    Fitted attributes: ``log_weights_`` ``(K,)``, ``bacc_argmax_`` and ``bacc_`` (on the fitting data),
    ``n_passes_``.
    """

    def __init__(self, max_passes: int = 10, limit: float = 1.0, start: str = "argmax") -> None:
        self.max_passes = max_passes
        self.limit = limit
        self.start = start

    def fit(self, probs: Any, y: Any) -> BalancedDiagnosis:
        p, t = _check(probs, y)
        assert t is not None
        if not isinstance(self.max_passes, int) or self.max_passes < 1:
            raise ValueError(f"The 'max_passes' parameter must be an int >= 1. Got {self.max_passes!r} instead.")
        if self.start not in STARTS:
            raise ValueError(f"The 'start' parameter must be one of {STARTS}. Got {self.start!r} instead.")
        k = p.shape[1]
        grid = weight_grid(self.limit)
        logp = np.log(np.clip(p, 1e-12, None))
        # "prior": start from the Bayes shift to uniform priors, -log of the fitting rows' class frequencies
        b0 = -np.log(np.bincount(t, minlength=k).clip(1) / max(len(t), 1)) if self.start == "prior" else np.zeros(k)
        b0 = b0 - b0.mean()
        b = b0.copy()

        def score(bb: np.ndarray) -> float:
            return balanced_accuracy(t, (logp + bb).argmax(1), k)

        self.bacc_argmax_ = score(np.zeros(k))
        best = score(b)
        passes = 0
        for passes in range(1, self.max_passes + 1):
            changed = False
            for c in range(k):
                trial = b.copy()
                scores = np.empty(grid.size)
                for i, g in enumerate(grid):
                    trial[c] = b0[c] + g
                    scores[i] = score(trial)
                top = scores.max()
                if top <= best + 1e-12:
                    continue
                # the middle of the widest run of grid values reaching the top score
                hits = np.flatnonzero(scores >= top - 1e-12)
                runs = np.split(hits, np.flatnonzero(np.diff(hits) > 1) + 1)
                run = max(runs, key=len)
                b[c] = b0[c] + grid[run[len(run) // 2]]
                best = score(b)
                changed = True
            if not changed:
                break
        self.log_weights_ = b - b.mean()  # only differences matter
        self.bacc_ = best
        self.n_passes_ = passes
        return self

    def _fitted(self) -> np.ndarray:
        if not hasattr(self, "log_weights_"):
            raise RuntimeError("This BalancedDiagnosis is not fitted yet: call fit(probs, y) first.")
        return self.log_weights_

    def predict(self, probs: Any) -> np.ndarray:
        """Class index per row: ``argmax_k log p_k + log_weights_k``."""
        b = self._fitted()
        p, _ = _check(probs)
        if p.shape[1] != b.size:
            raise ValueError(f"The 'probs' parameter must have {b.size} columns (classes). Got {p.shape[1]}.")
        return (np.log(np.clip(p, 1e-12, None)) + b).argmax(1)

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """What bundle.json records: the log-weights by class and how they were fitted."""
        b = self._fitted()
        return {
            "rule": "balanced",
            "log_weights": {c: round(float(w), 6) for c, w in zip(classes, b, strict=True)},
            "formula": "argmax_k log p_k + log_weights_k (p: calibrated probabilities)",
            "fitted_for": f"balanced accuracy (mean per-class sensitivity), coordinate ascent from {self.start}",
            "limit": self.limit,
            "start": self.start,
            "bacc_argmax": round(float(self.bacc_argmax_), 6),
            "bacc": round(float(self.bacc_), 6),
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any], classes: Sequence[str]) -> BalancedDiagnosis:
        """The rule recorded by :meth:`to_dict` (every class must have a weight)."""
        weights = spec.get("log_weights")
        if not isinstance(weights, dict) or set(weights) != set(classes):
            raise ValueError(
                f"The diagnosis rule must give log_weights for exactly the classes {list(classes)}. Got {weights!r}."
            )
        out = cls(limit=float(spec.get("limit", 1.0)), start=str(spec.get("start", "argmax")))
        out.log_weights_ = np.asarray([float(weights[c]) for c in classes])
        out.bacc_argmax_ = float(spec.get("bacc_argmax", float("nan")))
        out.bacc_ = float(spec.get("bacc", float("nan")))
        out.n_passes_ = 0
        return out


def cross_validated_gain(
    probs: Any, y: Any, groups: Any, *, limit: float = 1.0, n_splits: int = 5, seeds: Sequence[int] = (0, 1, 2),
    max_passes: int = 10, start: str = "argmax",
) -> dict[str, Any]:
    """BACC of argmax and of the fitted rule on rows the rule was not fitted on: the rows are cut into
    ``n_splits`` lesion-grouped folds; the rule is fitted on the others and applied to each fold;
    averaged over the shuffles ``seeds``.

    Returns ``{"limit", "bacc_argmax", "bacc_balanced", "gain", "n_splits", "seeds"}``."""
    from sklearn.model_selection import GroupKFold

    p, t = _check(probs, y)
    assert t is not None
    g = np.asarray(groups)
    if g.shape != t.shape:
        raise ValueError(f"The 'groups' parameter must hold one group per row ({t.size}). Got shape {g.shape}.")
    k = p.shape[1]
    scores = []
    for seed in seeds:
        pred = np.empty_like(t)
        for fit_rows, held in GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(p, t, g):
            rule = BalancedDiagnosis(max_passes=max_passes, limit=limit, start=start).fit(p[fit_rows], t[fit_rows])
            pred[held] = rule.predict(p[held])
        scores.append(balanced_accuracy(t, pred, k))
    argmax = float(balanced_accuracy(t, p.argmax(1), k))
    balanced = float(np.mean(scores))
    return {
        "limit": limit, "start": start, "bacc_argmax": argmax, "bacc_balanced": balanced, "gain": balanced - argmax,
        "n_splits": n_splits, "seeds": list(seeds),
    }


def select_diagnosis_rule(
    probs: Any, y: Any, groups: Any, *, limits: Sequence[float] = LIMITS, n_splits: int = 5, starts: Sequence[str] = STARTS,
) -> tuple[BalancedDiagnosis, dict[str, Any]]:
    """Choose the start (:data:`STARTS`) and weight limit by lesion-grouped cross-validation on the
    held-out predictions and fit them on all of them; when none beats argmax out of sample, the rule
    is argmax (all weights 0).

    Returns the rule and a report (each limit's cross-validated BACC, the choice and why)."""
    p, t = _check(probs, y)
    assert t is not None
    n_groups = np.unique(np.asarray(groups)).size
    if n_groups < 2 * n_splits:
        rule = BalancedDiagnosis(limit=min(limits))
        rule.log_weights_ = np.zeros(p.shape[1])
        rule.bacc_argmax_ = rule.bacc_ = float(balanced_accuracy(t, p.argmax(1), p.shape[1]))
        rule.n_passes_ = 0
        why = f"only {n_groups} lesions held out (fewer than {2 * n_splits}): too few to fit class weights; the diagnosis is argmax"
        return rule, {"trials": [], "chosen_limit": None, "why": why}
    trials = [
        cross_validated_gain(p, t, groups, limit=lim, n_splits=n_splits, start=start) for start in starts for lim in limits
    ]
    best = max(trials, key=lambda r: r["gain"])
    if best["gain"] > 0:
        rule = BalancedDiagnosis(limit=best["limit"], start=best["start"]).fit(p, t)
        why = (
            f"start {best['start']}, limit {best['limit']} raised cross-validated BACC by {best['gain']:+.4f} over argmax"
        )
    else:
        rule = BalancedDiagnosis(limit=min(limits)).fit(p, t)
        rule.log_weights_ = np.zeros(p.shape[1])
        rule.bacc_ = rule.bacc_argmax_
        why = f"no weight limit beat argmax out of sample (best {best['gain']:+.4f}): the diagnosis is argmax"
    return rule, {"trials": trials, "chosen_limit": best["limit"] if best["gain"] > 0 else None, "why": why}
