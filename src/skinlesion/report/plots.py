"""PNG figures for evaluation reports (matplotlib Agg canvas; no pyplot, no global backend change)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from skinlesion.metrics.inputs import check_inputs


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def confusion_matrix_png(cm: Any, classes: Sequence[str], normalise: bool = True) -> bytes:
    """Confusion matrix heat map (rows = true class); with ``normalise`` cells show row fractions.

    Args:
        cm: counts of shape ``(K, K)``.
        classes: the K class names.
        normalise: colour and annotate by recall (row-normalised); counts are shown too.
    """
    counts = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"cm must have shape ({k}, {k}) for {k} classes; got {counts.shape}.")
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shown = np.where(rows > 0, counts / np.where(rows > 0, rows, 1), np.nan) if normalise else counts
    size = 1.2 + 0.6 * k
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    top = 1.0 if normalise else max(float(counts.max()), 1.0)
    im = ax.imshow(np.nan_to_num(shown), cmap="Blues", vmin=0, vmax=top)
    fig.colorbar(im, ax=ax, fraction=0.046)
    for i in range(k):
        for j in range(k):
            label = f"{shown[i, j]:.2f}\n({int(counts[i, j])})" if normalise and np.isfinite(shown[i, j]) else f"{int(counts[i, j])}"
            dark = np.isfinite(shown[i, j]) and shown[i, j] > 0.5 * top
            ax.text(j, i, label, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalise else ""))
    return _png(fig)


def reliability_diagram_png(curve: dict) -> bytes:
    """Reliability diagram (Guo et al. 2017) from :func:`~skinlesion.metrics.calibration.reliability_curve`."""
    for key in ("edges", "accuracy", "counts"):
        if key not in curve:
            raise ValueError(f"curve is missing key {key!r}; pass the dict from reliability_curve().")
    edges = np.asarray(curve["edges"], dtype=np.float64)
    acc = np.array([np.nan if a is None else a for a in curve["accuracy"]], dtype=np.float64)
    conf = np.array([np.nan if c is None else c for c in curve.get("confidence", [None] * len(acc))], dtype=np.float64)
    counts = np.asarray(curve["counts"], dtype=np.float64)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = _new_figure(5.0, 5.5)
    ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ok = np.isfinite(acc)
    ax.bar(centres[ok], acc[ok], width=widths[ok], edgecolor="black", alpha=0.7, label="accuracy")
    if np.isfinite(conf).any():
        ax.plot(conf[ok], acc[ok], "o", color="tab:red", markersize=3, label="mean confidence")
    title = "Reliability diagram"
    if curve.get("ece") is not None:
        title += f" (ECE {curve['ece']:.4f})"
    ax.set_title(title)
    ax.set_ylabel("Accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.bar(centres, counts, width=widths, color="tab:grey", edgecolor="black")
    ax_hist.set_xlabel("Top-label confidence")
    ax_hist.set_ylabel("Images")
    return _png(fig)


def roc_curves_png(y_true: Any, probs: Any, classes: Sequence[str]) -> bytes:
    """One-vs-rest ROC curve per class; classes absent from ``y_true`` are listed as n/a."""
    from sklearn.metrics import roc_curve

    from skinlesion.metrics.classification import ovr_auc

    y, p = check_inputs(y_true, probs, classes)
    aucs = ovr_auc(y, p)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    for j, c in enumerate(classes):
        if np.isnan(aucs[j]):
            ax.plot([], [], label=f"{c}: n/a (no positives or negatives)")
            continue
        fpr, tpr, _ = roc_curve(y == j, p[:, j])
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{c}: AUC {aucs[j]:.3f}")
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("Sensitivity (true-positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("ROC curves (one vs rest)")
    ax.legend(loc="lower right", fontsize=7)
    return _png(fig)
