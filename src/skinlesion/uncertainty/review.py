"""Flag uncertain cases for clinician review: a threshold on an uncertainty score.

Selective classification (Geifman & El-Yaniv, NeurIPS 2017): the model abstains on ("flags") the
cases it is least sure of; the rest are its *coverage*, the error rate on them its *selective risk*.
The threshold is chosen on a validation split **only**, for a stated goal, and then frozen; report
its effect with :meth:`ReviewFlagger.evaluate` on a separate test split, never on the data it was
fitted on. Scores: an MC-dropout quantity (:class:`~skinlesion.uncertainty.mc_dropout.MCResult`),
where higher means less certain, or a probability, where lower means less certain: ``max_prob``
(of the most probable class) or ``decision_prob`` (the bundle's calibrated probability of the class
it decided, the p shown with the decision; its diagnosis rule may have chosen that class over the
most probable one).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from skinlesion.metrics.classification import UndefinedMetricWarning
from skinlesion.metrics.risk_coverage import check_scores_correct, tie_groups

UNCERTAINTY_SCORES = ("mutual_information", "predictive_entropy", "expected_entropy", "predicted_class_variance")
CONFIDENCE_SCORES = ("max_prob", "decision_prob")
#: Scores read at the decided class (they need the decisions beside the samples).
DECISION_SCORES = ("decision_prob",)
#: The per-image arrays of scored outputs (MC dropout or members x views) that review flags are fitted on.
ARRAYS: tuple[str, ...] = (
    "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information", "predicted_class_variance", "max_prob"
)
GOALS = ("error_fraction", "coverage", "risk")
_EPS = 1e-12


class ReviewFlagger:
    """Choose on validation the score threshold above which cases go to a clinician.

    Parameters
    ----------
    score : name of the score used; ``"mutual_information"`` (epistemic), ``"predictive_entropy"``
        (total), ``"expected_entropy"``, ``"predicted_class_variance"`` (flag high values) or
        ``"max_prob"`` / ``"decision_prob"`` (flag low values). Only names the convention: ``fit``/``flag``
        take the arrays.
    goal : what the threshold must achieve on validation.
        ``"error_fraction"``: flag the smallest fraction of cases that contains at least ``target``
        of the validation errors (default: half of them).
        ``"coverage"``: flag a fixed fraction, ``target`` = the review budget (fraction flagged,
        coverage ``1 - target``); the largest fraction <= ``target`` that ties allow.
        ``"risk"``: the largest coverage whose selective risk (error rate on unflagged cases) is
        <= ``target``; if only flagging everything achieves it, everything is flagged (with a warning).
    target : a fraction in [0, 1] ((0, 1] for ``"error_fraction"``).

    Equal scores are flagged together. Learned attributes (on the validation split): ``threshold_``
    (flag ``score >= threshold_``, or ``score <= threshold_`` for the probabilities; +-inf flags nothing),
    ``flagged_fraction_``, ``errors_removed_`` (fraction of validation errors flagged, NaN without
    errors) and ``selective_risk_`` (error rate on the unflagged validation cases, 0 if none remain).
    """

    def __init__(self, score: str = "mutual_information", goal: str = "error_fraction", target: float = 0.5) -> None:
        self.score = score
        self.goal = goal
        self.target = target

    # ------------------------------------------------------------------ helpers

    def _check_params(self) -> None:
        scores = UNCERTAINTY_SCORES + CONFIDENCE_SCORES
        if self.score not in scores:
            raise ValueError(f"The 'score' parameter must be one of {set(scores)}. Got {self.score!r} instead.")
        if self.goal not in GOALS:
            raise ValueError(f"The 'goal' parameter must be one of {set(GOALS)}. Got {self.goal!r} instead.")
        t = self.target
        low_open = self.goal == "error_fraction"
        ok = (
            not isinstance(t, bool)
            and isinstance(t, (int, float, np.floating, np.integer))
            and math.isfinite(t)
            and (0 < t <= 1 if low_open else 0 <= t <= 1)
        )
        if not ok:
            interval = "(0, 1]" if low_open else "[0, 1]"
            raise ValueError(
                f"The 'target' parameter must be a number in {interval} for goal={self.goal!r}. Got {t!r} instead."
            )

    @property
    def _higher_is_uncertain(self) -> bool:
        return self.score not in CONFIDENCE_SCORES

    def _uncertainty(self, scores: np.ndarray) -> np.ndarray:
        return scores if self._higher_is_uncertain else -scores

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("This ReviewFlagger is not fitted yet: call fit first.")

    def _choose(self, sizes: np.ndarray, errors: np.ndarray, n: int) -> int:
        """Number of tie groups (most uncertain first) to flag, 0..G."""
        flagged = np.r_[0, np.cumsum(sizes)]
        caught = np.r_[0, np.cumsum(errors)]
        total_errors = int(caught[-1])
        if self.goal == "error_fraction":
            if total_errors == 0:
                warnings.warn(
                    "The validation split has no errors, so there is none to remove: nothing is flagged.",
                    UserWarning,
                    stacklevel=3,
                )
                return 0
            return int(np.flatnonzero(caught >= self.target * total_errors - _EPS)[0])
        if self.goal == "coverage":
            return int(np.flatnonzero(flagged <= self.target * n + _EPS)[-1])
        kept = n - flagged
        with np.errstate(divide="ignore", invalid="ignore"):
            risk = np.where(kept > 0, (total_errors - caught) / np.where(kept > 0, kept, 1), 0.0)
        j = int(np.flatnonzero(risk <= self.target + _EPS)[0])
        if j == sizes.size and total_errors > 0:
            warnings.warn(
                f"No coverage > 0 has selective risk <= {self.target} on validation: every case is flagged.",
                UserWarning,
                stacklevel=3,
            )
        return j

    # ------------------------------------------------------------------ API

    def fit(self, scores_val: Any, correct_val: Any) -> ReviewFlagger:
        """Choose ``threshold_`` from validation scores ``(N,)`` and correctness ``(N,)`` (bool/0-1)."""
        self._check_params()
        s, c = check_scores_correct(scores_val, correct_val, "scores_val")
        u = self._uncertainty(s)
        values, sizes, errors = tie_groups(u, c)  # most uncertain group first
        j = self._choose(sizes, errors, s.size)
        threshold_u = math.inf if j == 0 else float(values[j - 1])
        self.threshold_ = threshold_u if self._higher_is_uncertain else -threshold_u
        flagged = u >= threshold_u
        n_errors = int((~c).sum())
        self.flagged_fraction_ = float(flagged.mean())
        self.errors_removed_ = float((~c & flagged).sum() / n_errors) if n_errors else float("nan")
        kept = ~flagged
        self.selective_risk_ = float((~c[kept]).mean()) if kept.any() else 0.0
        return self

    def flag(self, scores: Any) -> np.ndarray:
        """Boolean ``(N,)``: True for the cases to send to review."""
        self._check_fitted()
        s = np.asarray(scores)
        if s.ndim != 1 or s.dtype == bool or not np.issubdtype(s.dtype, np.number) or not np.all(np.isfinite(s)):
            raise ValueError(f"The 'scores' parameter must be a 1-D array of finite numbers. Got shape {s.shape}.")
        s = s.astype(np.float64)
        return s >= self.threshold_ if self._higher_is_uncertain else s <= self.threshold_

    def score_of(self, result: Any, decisions: Any = None, probs: Any = None) -> np.ndarray:
        """The array of this flagger's ``score`` from an :class:`MCResult` (``getattr(result, score)``);
        ``decision_prob``: the probability of each image's decided class (``decisions`` ``(N,)``) in
        ``probs`` ``(N, K)``, the bundle's calibrated probabilities (None: the result's mean probabilities)."""
        self._check_params()
        if self.score not in DECISION_SCORES:
            return np.asarray(getattr(result, self.score))
        probs = np.asarray(result.mean_probs if probs is None else probs)
        d = None if decisions is None else np.asarray(decisions)
        if d is None or d.shape != probs.shape[:1] or not np.issubdtype(d.dtype, np.integer) or (
                d.size and (d.min() < 0 or d.max() >= probs.shape[1])):
            got = "None" if d is None else f"{d.dtype} of shape {d.shape}"
            raise ValueError(f"The 'decisions' parameter must hold the decided class index in [0, {probs.shape[1]}) of "
                             f"each of the {probs.shape[0]} images for score {self.score!r}. Got {got} instead.")
        return probs[np.arange(d.size), d]

    def evaluate(self, scores_test: Any, correct_test: Any) -> dict[str, float]:
        """Effect of the frozen threshold on a held-out split.

        Returns ``n``, ``n_flagged``, ``flagged_fraction``, ``coverage``, ``n_errors``,
        ``errors_removed`` (fraction of the errors that are flagged), ``accuracy`` (all cases),
        ``accuracy_unflagged`` (= 1 - selective risk) and ``accuracy_flagged``. Undefined values
        (no errors, nothing flagged, nothing left) are NaN with an :class:`UndefinedMetricWarning`.
        """
        self._check_fitted()
        s, c = check_scores_correct(scores_test, correct_test, "scores_test")
        flagged = self.flag(s)
        wrong = ~c

        def ratio(num: float, den: float, what: str) -> float:
            if den == 0:
                warnings.warn(f"{what} is undefined on this split: NaN.", UndefinedMetricWarning, stacklevel=3)
                return float("nan")
            return float(num / den)

        n_flagged = int(flagged.sum())
        return {
            "n": int(s.size),
            "n_flagged": n_flagged,
            "flagged_fraction": n_flagged / s.size,
            "coverage": 1.0 - n_flagged / s.size,
            "n_errors": int(wrong.sum()),
            "errors_removed": ratio((wrong & flagged).sum(), wrong.sum(), "errors_removed (no errors)"),
            "accuracy": float(c.mean()),
            "accuracy_unflagged": ratio((c & ~flagged).sum(), (~flagged).sum(), "accuracy_unflagged (all flagged)"),
            "accuracy_flagged": ratio((c & flagged).sum(), n_flagged, "accuracy_flagged (none flagged)"),
        }

    def __repr__(self) -> str:
        return f"ReviewFlagger(score={self.score!r}, goal={self.goal!r}, target={self.target!r})"


__all__ = ["ReviewFlagger"]
