"""Lesion-level (cluster) bootstrap confidence intervals for any metric.

Images of one lesion are not independent, so resampling images understates the variance. We
resample *groups* (lesions, or patients) with replacement and keep all their images: the cluster
bootstrap (Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007), with percentile intervals
(Efron & Tibshirani 1993). All metrics are evaluated on the same resamples, so intervals are paired.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from skinlesion.metrics.calibration import top_label_ece
from skinlesion.metrics.classification import (
    confusion_matrix,
    malignant_class_indices,
    one_vs_rest_rates,
    ovr_auc,
)
from skinlesion.metrics.inputs import check_inputs

logger = logging.getLogger(__name__)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _group_codes(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    import pandas as pd

    arr = np.asarray(groups, dtype=object)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"groups must have one entry per image ({n}); got shape {arr.shape}.")
    missing = np.flatnonzero(pd.isna(arr))
    if missing.size:
        raise ValueError(f"groups[{int(missing[0])}] is missing (None/NaN); every image needs a lesion id.")
    codes, _ = pd.factorize(arr)
    return codes


def _resample_index(rng: np.random.Generator, order: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Image indices of one cluster resample: draw groups with replacement, take all their images."""
    drawn = rng.integers(0, sizes.shape[0], size=sizes.shape[0])
    counts = sizes[drawn]
    total = int(counts.sum())
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.repeat(starts[drawn], counts) + offsets]


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    groups: Any,
    metrics: dict[str, MetricFn],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict]:
    """Percentile confidence intervals from a cluster (lesion-level) bootstrap.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probs: class probabilities, shape ``(n, K)``.
        groups: lesion (or patient) id per image, shape ``(n,)``; ``None`` treats every image as
            its own group (only honest when each lesion has one image).
        metrics: ``{name: fn(y_true, probs) -> float}``; see :func:`standard_metric_fns`.
        n_boot: number of resamples.
        alpha: 1 - confidence level (0.05 gives a 95% interval).
        seed: seed of the resampling generator (same seed, same intervals).

    Returns:
        ``{name: {estimate, low, high, alpha, n_boot, n_boot_valid}}``. ``estimate`` is the metric on
        the full data; resamples where a metric is NaN are dropped and counted (``n_boot_valid``);
        with no valid resample, ``low``/``high`` are NaN.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"The 'n_boot' parameter must be a positive integer. Got {n_boot!r} instead.")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"The 'alpha' parameter must be a float in (0, 1). Got {alpha!r} instead.")
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"The 'metrics' parameter must be a non-empty dict of name -> callable. Got {metrics!r} instead.")
    for name, fn in metrics.items():
        if not callable(fn):
            raise ValueError(f"metrics[{name!r}] must be callable as fn(y_true, probs) -> float; got {type(fn).__name__}.")
    y, p = check_inputs(y_true, probs)
    codes = _group_codes(groups, y.shape[0])
    sizes = np.bincount(codes)
    if sizes.shape[0] < 2:
        raise ValueError(f"groups holds {sizes.shape[0]} distinct lesion id(s); the bootstrap needs at least 2.")
    order = np.argsort(codes, kind="stable")
    starts = np.cumsum(sizes) - sizes

    names = list(metrics)
    fns = [metrics[k] for k in names]
    estimates = [float(fn(y, p)) for fn in fns]
    samples = np.full((len(fns), int(n_boot)), np.nan)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # per-resample undefined-metric warnings are counted instead
        for b in range(int(n_boot)):
            idx = _resample_index(rng, order, starts, sizes)
            yb, pb = y[idx], p[idx]
            for j, fn in enumerate(fns):
                samples[j, b] = fn(yb, pb)

    out: dict[str, dict] = {}
    q = [50.0 * alpha, 100.0 - 50.0 * alpha]
    for j, name in enumerate(names):
        valid = samples[j][np.isfinite(samples[j])]
        low, high = (float(v) for v in np.percentile(valid, q)) if valid.size else (math.nan, math.nan)
        if valid.size < n_boot:
            logger.warning(
                "bootstrap: metric %r was undefined in %d of %d resamples (dropped).", name, n_boot - valid.size, n_boot
            )
        out[name] = {
            "estimate": estimates[j],
            "low": low,
            "high": high,
            "alpha": float(alpha),
            "n_boot": int(n_boot),
            "n_boot_valid": int(valid.size),
        }
    return out


def standard_metric_fns(classes: Sequence[str], *, present: Sequence[int] | None = None) -> dict[str, MetricFn]:
    """The metrics shown in evaluation reports, as fast ``fn(y_true, probs)`` callables.

    Keys: ``bacc``, ``malignant_bacc``, ``accuracy``, ``f1_macro``, ``f1_weighted``,
    ``auc_macro``, ``ece`` and ``sensitivity_<CLS>`` / ``specificity_<CLS>`` per class, with the
    definitions of :func:`~skinlesion.metrics.classification.compute_classification_metrics`.
    The callables expect already-validated arrays (``bootstrap_ci`` validates once).

    Args:
        classes: the K class names, in column order.
        present: class indices that must all occur in a resample (typically the classes present
            in the full evaluation set, ``np.unique(y_true)``); a resample missing one gives NaN for
            the macro metrics, so it is dropped and counted rather than silently averaged over
            fewer classes. ``None`` averages over whichever classes each resample contains.
    """
    classes = list(classes)
    k = len(classes)
    required = np.asarray(sorted(set(int(i) for i in present)) if present is not None else [], dtype=np.int64)
    if required.size and (required.min() < 0 or required.max() >= k):
        raise ValueError(f"present must hold class indices in [0, {k}); got {required.tolist()}.")
    mal = np.asarray(malignant_class_indices(classes), dtype=np.int64)

    def rates(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
        return one_vs_rest_rates(confusion_matrix(y, p.argmax(axis=1), k))

    def complete(y: np.ndarray) -> bool:
        return not required.size or bool(np.isin(required, y).all())

    def nanmean(v: np.ndarray) -> float:
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else math.nan

    def macro(key: str, idx: np.ndarray | None = None) -> MetricFn:
        def fn(y: np.ndarray, p: np.ndarray) -> float:
            if not complete(y):
                return math.nan
            v = rates(y, p)[key]
            return nanmean(v if idx is None else v[idx])

        return fn

    def accuracy(y: np.ndarray, p: np.ndarray) -> float:
        return float(np.mean(p.argmax(axis=1) == y))

    def f1_weighted(y: np.ndarray, p: np.ndarray) -> float:
        r = rates(y, p)
        return float(np.nansum(r["f1"] * r["support"]) / r["support"].sum())

    def auc_macro(y: np.ndarray, p: np.ndarray) -> float:
        return nanmean(ovr_auc(y, p)) if complete(y) else math.nan

    def ece(y: np.ndarray, p: np.ndarray) -> float:
        return top_label_ece(y, p)

    fns: dict[str, MetricFn] = {
        "bacc": macro("sensitivity"),
        "malignant_bacc": macro("sensitivity", mal) if mal.size else (lambda y, p: math.nan),
        "accuracy": accuracy,
        "f1_macro": macro("f1"),
        "f1_weighted": f1_weighted,
        "auc_macro": auc_macro,
        "ece": ece,
    }
    for j, c in enumerate(classes):
        for key in ("sensitivity", "specificity"):
            fns[f"{key}_{c}"] = (lambda key_, j_: lambda y, p: float(rates(y, p)[key_][j_]))(key, j)
    return fns


def standard_intervals(
    y_true: Any, probs: Any, groups: Any, classes: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict] | None:
    """:func:`bootstrap_ci` of :func:`standard_metric_fns` with every class of ``y_true`` required in a
    resample (a resample missing one is dropped and counted); None when ``n_boot`` is 0."""
    if n_boot == 0:
        return None
    present = np.unique(np.asarray(y_true))
    return bootstrap_ci(y_true, probs, groups, standard_metric_fns(classes, present=present), n_boot=n_boot, seed=seed)
