"""The multiclass decision rule of a calibrated bundle.

Classes that have a clinical threshold are checked in priority order, most dangerous first: the
first class whose probability reaches its threshold is the decision. If none does, the decision is
the most probable class among the classes *without* a threshold (all classes when every class has
one). So a thresholded class is never decided below its threshold, and the highest-priority class
is decided exactly when ``p >= t`` (its validation sensitivity/specificity are those of the
one-vs-rest threshold); a lower-priority class can lose images to a higher-priority one.

``conflict="ratio"`` resolves images where several thresholds fire by the largest ``p / t`` instead
of the priority order (priority still breaks exact ties): no class then loses all of its shared
images to a very low threshold of another class, at the cost of the top class's exact guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Most dangerous first: malignant (melanoma, then the keratinocyte cancers), then benign mimics.
DEFAULT_PRIORITY: tuple[str, ...] = ("MEL", "SCC", "BCC", "AKIEC", "BKL", "VASC", "DF", "NV", "UNK")
CONFLICTS = ("priority", "ratio")
#: What a bundle reports as *the* decision (``decision.policy`` in bundle.json): the diagnosis fitted
#: for balanced accuracy (:mod:`skinlesion.calibration.diagnosis`; the default), or this module's
#: priority-threshold rule, which reproduces the ISIC 2018 reference system. The class flags and
#: the referral are reported beside the decision under either policy.
DIAGNOSIS_POLICY = "diagnosis"
PRIORITY_POLICY = "priority-threshold"
POLICIES = (DIAGNOSIS_POLICY, PRIORITY_POLICY)
DEFAULT_POLICY = DIAGNOSIS_POLICY


def resolve_priority(classes: Sequence[str], priority: Sequence[str] | None = None) -> list[str]:
    """A full priority order over ``classes``: the given order first, then DEFAULT_PRIORITY, then the rest."""
    classes = list(classes)
    given = list(priority or [])
    unknown = [c for c in given if c not in classes]
    if unknown:
        raise ValueError(f"The 'priority' parameter names unknown class(es) {unknown}; classes are {classes}")
    if len(set(given)) != len(given):
        raise ValueError(f"The 'priority' parameter repeats a class: {given}")
    order = given + [c for c in DEFAULT_PRIORITY if c in classes and c not in given]
    return order + [c for c in classes if c not in order]


def decide(
    probs: Any,
    classes: Sequence[str],
    thresholds: Mapping[str, float | None],
    priority: Sequence[str] | None = None,
    *,
    conflict: str = "priority",
    return_reason: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Decisions ``(N,)`` (class indices) from probabilities ``(N, K)``; see the module docstring.

    With ``return_reason`` also returns, per image, the index of the class whose threshold fired,
    or -1 when the argmax fallback decided.
    """
    p = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probs must have shape (N, {len(classes)}). Got {p.shape} instead.")
    unknown = [c for c in thresholds if c not in classes]
    if unknown:
        raise ValueError(f"Thresholds name unknown class(es) {unknown}; classes are {classes}")
    order = resolve_priority(classes, priority)
    active = {c: t for c, t in thresholds.items() if t is not None}
    if conflict not in CONFLICTS:
        raise ValueError(f"The 'conflict' parameter must be one of {CONFLICTS}. Got {conflict!r} instead.")
    fired = np.full(p.shape[0], -1, dtype=np.int64)
    best = np.zeros(p.shape[0])
    for c in order:
        if c in active:
            j = classes.index(c)
            hit = p[:, j] >= active[c]
            if conflict == "priority":
                take = hit & (fired < 0)
            else:
                ratio = p[:, j] / max(active[c], 1e-12)
                take = hit & ((fired < 0) | (ratio > best))
                best = np.where(take, ratio, best)
            fired = np.where(take, j, fired)
    free = [j for j, c in enumerate(classes) if c not in active] or list(range(len(classes)))
    fallback = np.asarray(free)[p[:, free].argmax(axis=1)]
    decision = np.where(fired >= 0, fired, fallback)
    return (decision, fired) if return_reason else decision
