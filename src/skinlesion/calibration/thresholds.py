"""Per-class one-vs-rest clinical operating points chosen on validation data only.

A target such as ``MEL: sensitivity >= 0.85, specificity >= 0.85`` is met by a threshold ``t`` on the
class probability (positive when ``p >= t``). Choosing ``t`` where the *point estimate* just reaches
the target fits the validation noise: on new data the target is then missed about half of the time
(the reference systems' experience). Here, with ``confidence=0.95`` a threshold is feasible only when
the one-sided lower confidence bound of each rate reaches its target (Clopper & Pearson 1934, or
Wilson 1927), so a feasible threshold meets the target on unseen data of the same distribution with
about that confidence. Among feasible thresholds, ``prefer`` picks:

* ``balanced`` (default): the largest smallest margin of the two bounds over their targets;
* ``sensitivity``: the lowest feasible threshold (most sensitive);
* ``specificity``: the highest feasible threshold (most specific).

When no threshold is feasible the search says so (``status='infeasible'`` with the reason) and applies
the documented ``fallback``:

* ``keep_sensitivity`` (default): the highest threshold whose sensitivity bound still reaches the
  target (maximises specificity at the required sensitivity); if even the lowest threshold cannot
  reach the bound (too few positives), the highest threshold whose point estimate reaches it;
* ``keep_specificity``: the lowest threshold whose specificity bound reaches its target;
* ``youden``: the threshold maximising sensitivity + specificity - 1 (point estimates);
* ``none``: no threshold; the class is decided by the argmax rule only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta, norm

BOUNDS = ("clopper-pearson", "wilson")
PREFER = ("balanced", "sensitivity", "specificity")
FALLBACKS = ("keep_sensitivity", "keep_specificity", "youden", "none")
_TARGET = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*:\s*(.+)$")
_ALIASES = {"sens": "sensitivity", "sensitivity": "sensitivity", "spec": "specificity", "specificity": "specificity"}


@dataclass(frozen=True)
class Target:
    """Minimum sensitivity and specificity for one class (0 means no constraint)."""

    cls: str
    sensitivity: float = 0.0
    specificity: float = 0.0

    def __post_init__(self) -> None:
        for name in ("sensitivity", "specificity"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v < 1.0):
                raise ValueError(f"Target {self.cls}: {name} must be a number in [0, 1). Got {v!r} instead.")


def parse_targets(specs: Sequence[str] | str) -> list[Target]:
    """Parse ``["MEL:sens=0.85,spec=0.85", "AKIEC:sens=0.75,spec=0.70"]`` (or one space-separated string)."""
    items = specs.split() if isinstance(specs, str) else list(specs)
    targets: list[Target] = []
    for item in items:
        m = _TARGET.match(item)
        if not m:
            raise ValueError(f"Target {item!r} is not of the form CLASS:sens=0.85,spec=0.85")
        cls, body = m.group(1), m.group(2)
        values: dict[str, float] = {}
        for part in body.split(","):
            key, _, val = part.partition("=")
            key = _ALIASES.get(key.strip().lower(), "")
            if not key:
                raise ValueError(f"Target {item!r}: unknown rate {part.split('=')[0].strip()!r}; use sens= and/or spec=")
            try:
                values[key] = float(val)
            except ValueError:
                raise ValueError(f"Target {item!r}: {part.strip()!r} needs a number, e.g. sens=0.85") from None
        if any(t.cls == cls for t in targets):
            raise ValueError(f"Class {cls!r} has two targets; give one per class")
        targets.append(Target(cls, **values))
    if not targets:
        raise ValueError("No target given: e.g. MEL:sens=0.85,spec=0.85")
    return targets


def lower_bound(successes: np.ndarray, trials: np.ndarray, confidence: float | None, method: str = "clopper-pearson") -> np.ndarray:
    """One-sided lower confidence bound of a binomial proportion (point estimate when confidence is None)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    if confidence is None:
        return phat
    if method == "clopper-pearson":
        alpha = 1.0 - confidence
        with np.errstate(invalid="ignore"):
            lb = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
        return np.where(n > 0, lb, np.nan)
    if method == "wilson":
        z = norm.ppf(confidence)
        denom = 1 + z * z / np.maximum(n, 1)
        centre = phat + z * z / (2 * np.maximum(n, 1))
        half = z * np.sqrt(phat * (1 - phat) / np.maximum(n, 1) + z * z / (4 * np.maximum(n, 1) ** 2))
        return np.where(n > 0, (centre - half) / denom, np.nan)
    raise ValueError(f"The 'method' parameter must be one of {BOUNDS}. Got {method!r} instead.")


@dataclass
class ThresholdChoice:
    """The chosen threshold of one class and how it was chosen (all rates on validation)."""

    cls: str
    threshold: float | None
    status: str  # "met" or "infeasible"
    rule: str  # the preference or fallback that picked the threshold
    target_sensitivity: float
    target_specificity: float
    sensitivity: float
    specificity: float
    sensitivity_lower: float
    specificity_lower: float
    n_positive: int
    n_negative: int
    confidence: float | None
    bound: str
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _rates(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (unique scores, ascending) with TP and TN counts for ``score >= t``."""
    thr = np.unique(scores)
    pos_sorted = np.sort(scores[positive])
    neg_sorted = np.sort(scores[~positive])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, thr, side="left")
    tn = np.searchsorted(neg_sorted, thr, side="left")
    return thr, tp, tn


def search_threshold(
    scores: Any,
    positive: Any,
    target: Target,
    *,
    confidence: float | None = 0.95,
    bound: str = "clopper-pearson",
    prefer: str = "balanced",
    fallback: str = "keep_sensitivity",
) -> ThresholdChoice:
    """Choose a threshold on ``scores`` (N,) for the binary truth ``positive`` (N,) (see module docstring)."""
    if prefer not in PREFER:
        raise ValueError(f"The 'prefer' parameter must be one of {PREFER}. Got {prefer!r} instead.")
    if fallback not in FALLBACKS:
        raise ValueError(f"The 'fallback' parameter must be one of {FALLBACKS}. Got {fallback!r} instead.")
    if bound not in BOUNDS:
        raise ValueError(f"The 'bound' parameter must be one of {BOUNDS}. Got {bound!r} instead.")
    if confidence is not None and not (0.5 <= confidence < 1):
        raise ValueError(f"The 'confidence' parameter must be in [0.5, 1) or None. Got {confidence!r} instead.")
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    if s.ndim != 1 or pos.shape != s.shape:
        raise ValueError(f"'scores' and 'positive' must be 1-D of one length. Got {s.shape} and {pos.shape}.")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"Class {target.cls}: validation has {n_pos} positive and {n_neg} negative images; "
            "a threshold needs both"
        )
    thr, tp, tn = _rates(s, pos)
    sens, spec = tp / n_pos, tn / n_neg
    sens_lb = lower_bound(tp, np.full_like(tp, n_pos), confidence, bound)
    spec_lb = lower_bound(tn, np.full_like(tn, n_neg), confidence, bound)
    ok_sens = sens_lb >= target.sensitivity
    ok_spec = spec_lb >= target.specificity
    feasible = ok_sens & ok_spec

    def choice(i: int | None, status: str, rule: str, reason: str = "") -> ThresholdChoice:
        nan = float("nan")
        return ThresholdChoice(
            cls=target.cls,
            threshold=None if i is None else float(thr[i]),
            status=status,
            rule=rule,
            target_sensitivity=target.sensitivity,
            target_specificity=target.specificity,
            sensitivity=nan if i is None else float(sens[i]),
            specificity=nan if i is None else float(spec[i]),
            sensitivity_lower=nan if i is None else float(sens_lb[i]),
            specificity_lower=nan if i is None else float(spec_lb[i]),
            n_positive=n_pos,
            n_negative=n_neg,
            confidence=confidence,
            bound=bound,
            reason=reason,
        )

    if feasible.any():
        idx = np.flatnonzero(feasible)
        if prefer == "sensitivity":
            i = int(idx[0])
        elif prefer == "specificity":
            i = int(idx[-1])
        else:
            margin = np.minimum(sens_lb[idx] - target.sensitivity, spec_lb[idx] - target.specificity)
            i = int(idx[np.argmax(margin)])
        return choice(i, "met", prefer)

    what = "lower confidence bounds" if confidence is not None else "point estimates"
    best_sens_spec = float(spec_lb[ok_sens].max()) if ok_sens.any() else float("nan")
    reason = (
        f"no threshold gives both sensitivity >= {target.sensitivity} and specificity >= {target.specificity} "
        f"({what}, {n_pos} positives / {n_neg} negatives on validation)"
    )
    if ok_sens.any():
        reason += f"; at the sensitivity target the best specificity bound is {best_sens_spec:.3f}"
    else:
        reason += f"; even the lowest threshold has sensitivity bound {float(sens_lb[0]):.3f}"
    if fallback == "none":
        return choice(None, "infeasible", "none", reason)
    if fallback == "keep_sensitivity":
        if ok_sens.any():
            return choice(int(np.flatnonzero(ok_sens)[-1]), "infeasible", fallback, reason)
        point_ok = np.flatnonzero(sens >= target.sensitivity)
        return choice(int(point_ok[-1]), "infeasible", fallback + " (point estimate)", reason)
    if fallback == "keep_specificity":
        if ok_spec.any():
            return choice(int(np.flatnonzero(ok_spec)[0]), "infeasible", fallback, reason)
        point_ok = np.flatnonzero(spec >= target.specificity)
        i = int(point_ok[0]) if point_ok.size else len(thr) - 1
        return choice(i, "infeasible", fallback + " (point estimate)", reason)
    return choice(int(np.argmax(sens + spec)), "infeasible", fallback, reason)


class ThresholdCalibrator:
    """Per-class thresholds for several targets, fitted on validation probabilities.

    Parameters mirror :func:`search_threshold`; ``priority`` (default: most dangerous first) and
    ``conflict`` are those of :func:`skinlesion.calibration.decision.decide`.
    Learned attributes: ``thresholds_`` (``{class: threshold or None}``), ``choices_``
    (``{class: ThresholdChoice}``), ``priority_``, ``classes_``.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        confidence: float | None = 0.95,
        bound: str = "clopper-pearson",
        prefer: str = "balanced",
        fallback: str = "keep_sensitivity",
        priority: Sequence[str] | None = None,
        conflict: str = "priority",
    ) -> None:
        self.targets = targets
        self.conflict = conflict
        self.confidence = confidence
        self.bound = bound
        self.prefer = prefer
        self.fallback = fallback
        self.priority = priority

    def fit(self, probs: Any, y: Any, classes: Sequence[str]) -> ThresholdCalibrator:
        from skinlesion.calibration.decision import resolve_priority

        p = np.asarray(probs, dtype=np.float64)
        labels = np.asarray(y)
        classes = list(classes)
        if p.ndim != 2 or p.shape[1] != len(classes) or labels.shape != (p.shape[0],):
            raise ValueError(f"probs must be (N, {len(classes)}) and y (N,). Got {p.shape} and {labels.shape}.")
        unknown = [t.cls for t in self.targets if t.cls not in classes]
        if unknown:
            raise ValueError(f"Target class(es) {unknown} are not among the model's classes {classes}")
        self.choices_ = {
            t.cls: search_threshold(
                p[:, classes.index(t.cls)],
                labels == classes.index(t.cls),
                t,
                confidence=self.confidence,
                bound=self.bound,
                prefer=self.prefer,
                fallback=self.fallback,
            )
            for t in self.targets
        }
        self.thresholds_ = {c: ch.threshold for c, ch in self.choices_.items()}
        self.classes_ = classes
        self.priority_ = resolve_priority(classes, self.priority)
        return self

    def predict(self, probs: Any) -> np.ndarray:
        from skinlesion.calibration.decision import decide

        if not hasattr(self, "thresholds_"):
            raise RuntimeError("This ThresholdCalibrator is not fitted yet: call fit(probs, y, classes) first.")
        return decide(probs, self.classes_, self.thresholds_, self.priority_, conflict=self.conflict)


def thresholds_from_dict(raw: Mapping[str, Any]) -> dict[str, float | None]:
    return {str(c): (None if v is None else float(v)) for c, v in raw.items()}
