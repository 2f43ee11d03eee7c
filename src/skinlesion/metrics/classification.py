"""Multi-class classification metrics for skin-lesion diagnosis, as pure functions on arrays.

Definitions follow the ISIC 2018 Task 3 challenge (Codella et al. 2019, arXiv:1902.03368) and
its official scorer ``isic-challenge-scoring`` where they agree with the usual ones:

* balanced accuracy (BACC) is the mean per-class recall over the classes *present* in
  ``y_true`` (a class with no true image has no recall and is left out of the mean). This is
  what ``sklearn.metrics.balanced_accuracy_score`` and the official scorer compute.
* per-class AUC is one-vs-rest ROC AUC on the class probability (Mann-Whitney U with mid-ranks
  for ties, equal to ``sklearn.metrics.roc_auc_score``).

Where this module differs from the official scorer (on purpose, documented):

* Predictions are ``argmax(probs)``; on an exact tie the official BACC counts the image as
  "undecided" (always wrong) while ``argmax`` takes the first tied class. Ties are logged.
* Per-class sensitivity/specificity/PPV/NPV here are of the argmax prediction (one-vs-rest of
  the confusion matrix); the official scorer thresholds each class probability at 0.5 instead,
  and it scores undefined ratios (e.g. PPV of a never-predicted class) as 1.0 where we give NaN.

Degenerate input (a class absent from ``y_true``) never crashes: the affected per-class values
are NaN and an :class:`UndefinedMetricWarning` says which (MONAI style).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from skinlesion.classes import UnknownLabelError, canonical_label, malignant_indices
from skinlesion.metrics.calibration import brier_score, expected_calibration_error, negative_log_likelihood
from skinlesion.metrics.inputs import check_inputs, check_labels

logger = logging.getLogger(__name__)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this input (e.g. a class absent from ``y_true``); it is NaN."""


# --------------------------------------------------------------------------- fast internals


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts of shape ``(K, K)``, rows = true class, columns = predicted class (no validation)."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def one_vs_rest_rates(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class sensitivity, specificity, PPV, NPV, F1 and support from a confusion matrix.

    Each value has shape ``(K,)``; undefined ratios (zero denominator) are NaN. F1 is
    ``2TP / (2TP + FP + FN)``, defined (possibly 0) whenever the class is present in ``y_true``.
    """
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    total = cm.sum()
    fn = support - tp
    fp = predicted - tp
    tn = total - tp - fn - fp
    return {
        "sensitivity": _ratio(tp, support),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, predicted),
        "npv": _ratio(tn, tn + fn),
        "f1": np.where(support > 0, _ratio(2 * tp, 2 * tp + fp + fn), np.nan),
        "support": support,
    }


def ovr_auc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class, shape ``(K,)``; NaN where a class has no positive or no negative.

    Mann-Whitney U with mid-ranks for ties (Hanley & McNeil 1982), equal to sklearn's
    ``roc_auc_score``; no input validation (callers validate).
    """
    n, k = probs.shape
    out = np.full(k, np.nan)
    for j in range(k):
        pos = y_true == j
        n_pos = int(pos.sum())
        n_neg = n - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        col = probs[:, j]
        ordered = np.sort(col)
        scores = col[pos]
        # mid-rank (1-based) of each positive among all scores
        midrank = (np.searchsorted(ordered, scores, "left") + np.searchsorted(ordered, scores, "right") + 1) / 2.0
        out[j] = (midrank.sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return out


def _canonical_or_self(name: str) -> str:
    try:
        return canonical_label(name)
    except UnknownLabelError:
        return str(name)


def malignant_class_indices(classes: Sequence[str]) -> list[int]:
    """Indices of MEL/BCC/AKIEC/SCC in ``classes`` (dataset-native names such as ``AK`` accepted)."""
    return malignant_indices([_canonical_or_self(c) for c in classes])


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


# --------------------------------------------------------------------------- public metrics


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Balanced accuracy: mean recall over the classes present in ``y_true``.

    Args:
        y_true: true class indices, shape ``(n,)``.
        y_pred: predicted class indices, shape ``(n,)``.
        n_classes: number of classes K (indices must be below it); inferred when omitted.
    """
    y = check_labels(y_true, n_classes, name="y_true")
    yp = check_labels(y_pred, n_classes, name="y_pred")
    if y.shape != yp.shape:
        raise ValueError(f"y_true has {y.shape[0]} entries but y_pred has {yp.shape[0]}; they must match.")
    k = n_classes if n_classes is not None else int(max(y.max(), yp.max())) + 1
    cm = confusion_matrix(y, yp, k)
    return _nanmean(_ratio(np.diag(cm).astype(np.float64), cm.sum(axis=1)))


def _average_precision(pos: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    if not pos.any():
        return math.nan
    return float(average_precision_score(pos, scores))


def _per_class_arrays(
    y: np.ndarray, p: np.ndarray, yp: np.ndarray, classes: Sequence[str]
) -> dict[str, np.ndarray]:
    k = len(classes)
    rates = one_vs_rest_rates(confusion_matrix(y, yp, k))
    rates["auc"] = ovr_auc(y, p)
    rates["ap"] = np.array([_average_precision(y == j, p[:, j]) for j in range(k)])
    absent = [c for c, s in zip(classes, rates["support"]) if s == 0]
    if absent:
        warnings.warn(
            f"Classes {absent} are absent from y_true: their sensitivity, F1, AUC and AP are NaN "
            "and they are left out of macro averages.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    never = [c for c, v, s in zip(classes, rates["ppv"], rates["support"]) if np.isnan(v) and s > 0]
    if never:
        warnings.warn(f"Classes {never} are never predicted: their PPV is NaN.", UndefinedMetricWarning, stacklevel=3)
    return rates


def _check_pred(y_pred: Any, y: np.ndarray, k: int) -> np.ndarray:
    yp = check_labels(y_pred, k, name="y_pred")
    if yp.shape != y.shape:
        raise ValueError(f"y_pred has {yp.shape[0]} entries but y_true has {y.shape[0]}; they must match.")
    return yp


def per_class_metrics(y_true: Any, probs: Any, y_pred: Any, classes: Sequence[str]) -> dict[str, dict]:
    """One-vs-rest metrics per class.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probs: class probabilities, shape ``(n, K)``.
        y_pred: predicted class indices, shape ``(n,)`` (e.g. ``argmax(probs)`` or thresholded).
        classes: the K class names, in column order.

    Returns:
        ``{class: {sensitivity, specificity, ppv, npv, f1, auc, ap, support}}``; undefined values
        are NaN (with an :class:`UndefinedMetricWarning`), support is an int.
    """
    classes = list(classes)
    y, p = check_inputs(y_true, probs, classes)
    yp = _check_pred(y_pred, y, len(classes))
    arr = _per_class_arrays(y, p, yp, classes)
    keys = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "ap")
    return {
        c: {**{key: float(arr[key][j]) for key in keys}, "support": int(arr["support"][j])}
        for j, c in enumerate(classes)
    }


def _log_ties(p: np.ndarray) -> None:
    top = p.max(axis=1, keepdims=True)
    n_ties = int(((p == top).sum(axis=1) > 1).sum())
    if n_ties:
        logger.warning(
            "%d image(s) have tied top probabilities; argmax assigns the first tied class "
            "(the official ISIC scorer counts such images as wrong).",
            n_ties,
        )


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python types and NaN/inf into ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def compute_classification_metrics(
    y_true: Any, probs: Any, classes: Sequence[str], *, y_pred: Any = None
) -> dict:
    """All headline and per-class metrics, as a JSON-serialisable dict (NaN -> ``None``).

    Args:
        y_true: true class indices, shape ``(n,)``.
        probs: class probabilities, shape ``(n, K)``; rows sum to 1.
        classes: the K class names, in column order.
        y_pred: predicted indices, shape ``(n,)``; defaults to ``argmax(probs)``.

    Returns:
        ``n, bacc, accuracy, f1_macro, f1_weighted, malignant_bacc, auc_macro, ece, nll, brier,
        per_class, confusion_matrix`` (rows = true class), ``classes``, ``absent_classes``.
        ``malignant_bacc`` is the mean sensitivity of the malignant classes (MEL, BCC, AKIEC, SCC)
        present in ``y_true``; macro averages skip classes absent from ``y_true``.
    """
    classes = list(classes)
    y, p = check_inputs(y_true, probs, classes)
    k = len(classes)
    if y_pred is None:
        _log_ties(p)
        yp = p.argmax(axis=1)
    else:
        yp = _check_pred(y_pred, y, k)
    cm = confusion_matrix(y, yp, k)
    arr = _per_class_arrays(y, p, yp, classes)
    support = arr["support"]
    mal = malignant_class_indices(classes)
    f1 = arr["f1"]
    out = {
        "n": int(y.shape[0]),
        "bacc": _nanmean(arr["sensitivity"]),
        "accuracy": float(np.trace(cm) / y.shape[0]),
        "f1_macro": _nanmean(f1),
        "f1_weighted": float(np.nansum(f1 * support) / support.sum()),
        "malignant_bacc": _nanmean(arr["sensitivity"][mal]) if mal else math.nan,
        "auc_macro": _nanmean(arr["auc"]),
        "ece": expected_calibration_error(y, p),
        "nll": negative_log_likelihood(y, p),
        "brier": brier_score(y, p),
        "per_class": {
            c: {
                **{key: float(arr[key][j]) for key in ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "ap")},
                "support": int(support[j]),
            }
            for j, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
        "classes": classes,
        "absent_classes": [c for c, s in zip(classes, support) if s == 0],
    }
    return to_jsonable(out)
