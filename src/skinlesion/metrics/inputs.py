"""Validation of metric inputs: class indices ``(n,)`` and probability rows ``(n, K)``.

Shared by every metric module (classification, calibration, bootstrap, ISIC files) and the
report plots, so one input is refused with one message wherever it enters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Tolerance on ``|sum(probs[i]) - 1|`` when validating probability rows.
PROB_SUM_ATOL: float = 1e-3


def check_labels(y: Any, n_classes: int | None = None, *, name: str = "y_true") -> np.ndarray:
    """Validate class indices; return them as a 1-D ``int64`` array of shape ``(n,)``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices; got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; at least one image is needed to compute metrics.")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        first = arr.flat[0].item() if isinstance(arr.flat[0], np.generic) else arr.flat[0]
        raise ValueError(
            f"{name} must hold integer class indices; got dtype {arr.dtype} (e.g. {first!r}). "
            "Map class names to indices first, e.g. classes.index(name)."
        )
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{name} must hold integer class indices; got {name}[{i}] = {arr[i].item()!r}.")
    out = arr.astype(np.int64)
    hi = n_classes if n_classes is not None else None
    bad = np.flatnonzero((out < 0) | ((out >= hi) if hi is not None else False))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {out[i]} is out of range; class indices must be in [0, {hi}) for {hi} classes."
            if hi is not None
            else f"{name}[{i}] = {out[i]} is negative; class indices must be >= 0."
        )
    return out


def check_probs(probs: Any, n_classes: int | None = None, *, name: str = "probs") -> np.ndarray:
    """Validate a probability matrix of shape ``(n, K)``: finite, >= 0, rows summing to ~1."""
    try:
        arr = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape (n_images, n_classes); {exc}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_images, n_classes); got shape {arr.shape}.")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise ValueError(f"{name} has {arr.shape[1]} columns but there are {n_classes} classes.")
    rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if rows.size:
        raise ValueError(f"{name} row {int(rows[0])} has a non-finite value (NaN or inf): {arr[rows[0]].tolist()}.")
    rows = np.flatnonzero((arr < 0).any(axis=1))
    if rows.size:
        raise ValueError(
            f"{name} row {int(rows[0])} has a negative value: {arr[rows[0]].tolist()}; "
            "expected probabilities (did you pass logits? apply softmax first)."
        )
    sums = arr.sum(axis=1)
    rows = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_ATOL)
    if rows.size:
        i = int(rows[0])
        raise ValueError(
            f"{name} row {i} sums to {sums[i]:.6g}; each row must sum to 1 (within {PROB_SUM_ATOL}). "
            "Did you pass logits? Apply softmax first."
        )
    return arr


def check_inputs(y_true: Any, probs: Any, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``y_true`` (n,) and ``probs`` (n, K) together (and ``classes`` of length K)."""
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique; got {classes}.")
    p = check_probs(probs, len(classes) if classes is not None else None)
    y = check_labels(y_true, p.shape[1])
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} entries but probs has {p.shape[0]} rows; they must match.")
    return y, p
