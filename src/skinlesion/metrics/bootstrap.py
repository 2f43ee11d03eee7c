"""Lesion-level (cluster) bootstrap confidence intervals for any metric.

Images of one lesion are not independent, so resampling images understates the variance. We
resample *groups* (lesions, or patients) with replacement and keep all their images: the cluster
bootstrap (Davison & Hinkley 1997, sec. 3.8; Field & Welsh 2007), with percentile intervals
(Efron & Tibshirani 1993). All metrics are evaluated on the same resamples, so intervals are paired.

:func:`bootstrap_ci` gives the interval of each metric; :func:`bootstrap_difference_ci` the interval
of the difference of one metric between two sets of predictions (or per-image values) of the same
images, both evaluated on every resample (a paired comparison: model vs reference, engine vs engine,
saliency maps vs random maps). Both draw their resamples the same way (:func:`_cluster_bootstrap`).
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


def _cluster_layout(groups: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, starts, sizes)``: image indices sorted by group, where each group starts, its size."""
    codes = _group_codes(groups, n)
    sizes = np.bincount(codes)
    return np.argsort(codes, kind="stable"), np.cumsum(sizes) - sizes, sizes


def _check_settings(n_boot: Any, alpha: Any) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"The 'n_boot' parameter must be a positive integer. Got {n_boot!r} instead.")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"The 'alpha' parameter must be a float in (0, 1). Got {alpha!r} instead.")


def _cluster_bootstrap(
    statistic: Callable[[np.ndarray], Sequence[float]],
    n_stats: int,
    layout: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """``(n_stats, n_boot)`` values of ``statistic(idx)`` over cluster resamples ``idx`` (image indices).

    Warnings inside ``statistic`` are silenced: undefined values (NaN) are counted by the caller.
    """
    order, starts, sizes = layout
    samples = np.full((n_stats, int(n_boot)), np.nan)
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for b in range(int(n_boot)):
            samples[:, b] = statistic(_resample_index(rng, order, starts, sizes))
    return samples


def _interval(name: str, estimate: float, samples: np.ndarray, alpha: float, n_boot: int) -> dict:
    """Percentile interval of the finite ``samples``, with the counts (see :func:`bootstrap_ci`)."""
    valid = samples[np.isfinite(samples)]
    q = [50.0 * alpha, 100.0 - 50.0 * alpha]
    low, high = (float(v) for v in np.percentile(valid, q)) if valid.size else (math.nan, math.nan)
    if valid.size < n_boot:
        logger.warning(
            "bootstrap: metric %r was undefined in %d of %d resamples (dropped).", name, n_boot - valid.size, n_boot
        )
    return {
        "estimate": float(estimate),
        "low": low,
        "high": high,
        "alpha": float(alpha),
        "n_boot": int(n_boot),
        "n_boot_valid": int(valid.size),
    }


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
    _check_settings(n_boot, alpha)
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"The 'metrics' parameter must be a non-empty dict of name -> callable. Got {metrics!r} instead.")
    for name, fn in metrics.items():
        if not callable(fn):
            raise ValueError(f"metrics[{name!r}] must be callable as fn(y_true, probs) -> float; got {type(fn).__name__}.")
    y, p = check_inputs(y_true, probs)
    layout = _cluster_layout(groups, y.shape[0])
    if layout[2].shape[0] < 2:
        raise ValueError(f"groups holds {layout[2].shape[0]} distinct lesion id(s); the bootstrap needs at least 2.")

    names = list(metrics)
    fns = [metrics[k] for k in names]
    estimates = [float(fn(y, p)) for fn in fns]

    def statistic(idx: np.ndarray) -> list[float]:
        yb, pb = y[idx], p[idx]
        return [fn(yb, pb) for fn in fns]

    samples = _cluster_bootstrap(statistic, len(fns), layout, n_boot, seed)
    return {name: _interval(name, estimates[j], samples[j], alpha, n_boot) for j, name in enumerate(names)}


def bootstrap_difference_ci(
    values: Any,
    reference: Any,
    groups: Any,
    metric: Callable[..., float],
    *,
    y_true: Any = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    name: str = "difference",
) -> dict:
    """Paired cluster-bootstrap interval of ``metric(values) - metric(reference)`` on the same images.

    Every resample draws groups (lesions) with replacement and evaluates both sides on the same
    images, so the interval is that of the difference itself, not of two independent estimates.

    Args:
        values: per-image predictions (class indices) or scores, first dimension ``n``.
        reference: the same for the reference (e.g. the reference model, eager PyTorch, random maps).
        groups: lesion (or patient) id per image, shape ``(n,)``; ``None``: every image its own group.
            A single group gives a zero-width interval (every resample is the whole data).
        metric: ``metric(y_true, x) -> float`` when ``y_true`` is given (e.g. balanced accuracy of
            predictions ``x``), else ``metric(x) -> float`` (e.g. ``np.mean`` of per-image scores).
        y_true: true class indices, shape ``(n,)``, or None.
        n_boot, alpha, seed: as in :func:`bootstrap_ci`.
        name: how a warning about undefined resamples names the metric.

    Returns:
        ``{estimate, low, high, alpha, n_boot, n_boot_valid}`` as one entry of :func:`bootstrap_ci`;
        ``estimate`` is the difference on the whole data.
    """
    _check_settings(n_boot, alpha)
    if not callable(metric):
        raise ValueError(f"The 'metric' parameter must be callable. Got {type(metric).__name__} instead.")
    a, b = np.asarray(values), np.asarray(reference)
    if a.ndim == 0 or a.shape[0] == 0 or b.shape[:1] != a.shape[:1]:
        raise ValueError(
            f"The 'values' and 'reference' parameters must hold the same number (>= 1) of images. "
            f"Got shapes {a.shape} and {b.shape} instead."
        )
    y = None if y_true is None else np.asarray(y_true)
    if y is not None and y.shape != a.shape[:1]:
        raise ValueError(f"The 'y_true' parameter must hold one label per image ({a.shape[0]}). Got shape {y.shape}.")

    def difference(idx: np.ndarray | slice) -> float:
        if y is None:
            return metric(a[idx]) - metric(b[idx])
        return metric(y[idx], a[idx]) - metric(y[idx], b[idx])

    layout = _cluster_layout(groups, a.shape[0])
    samples = _cluster_bootstrap(lambda idx: [difference(idx)], 1, layout, n_boot, seed)
    return _interval(name, difference(slice(None)), samples[0], alpha, n_boot)


def standard_metric_fns(classes: Sequence[str], *, present: Sequence[int] | None = None) -> dict[str, MetricFn]:
    """The metrics shown in evaluation reports, as fast ``fn(y_true, probs)`` callables.

    Keys: ``bacc``, ``malignant_bacc``, ``accuracy``, ``f1_macro``, ``f1_weighted``,
    ``auc_macro``, ``ece`` and ``sensitivity_<CLS>`` / ``specificity_<CLS>`` / ``auc_<CLS>`` (one-vs-rest) per class, with the
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
        fns[f"auc_{c}"] = (lambda j_: lambda y, p: float(ovr_auc(y, p)[j_]))(j)  # one-vs-rest, e.g. melanoma AUC
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
