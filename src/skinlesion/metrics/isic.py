"""ISIC challenge CSV files (submission and ground truth) and the official scorer.

File format (ISIC 2018 Task 3 / ISIC 2019 Task 1): header ``image,<CLASS...>``, one row per image
id without extension, one probability column per class. Column names and order:

* ISIC 2018: ``MEL,NV,BCC,AKIEC,BKL,DF,VASC`` (when ``classes`` is that set, in any order);
* ISIC 2019: ``MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`` (when ``classes`` is that set; without
  ``UNK`` an all-zero ``UNK`` column is written, since the official files require it);
* any other class set: the given names, in the given order.

The official scorer (``isic-challenge-scoring``) gives zero weight to image ``ISIC_0035068``
when it is in the truth file (a known-bad 2019 test image); our own metrics do not.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion import _csv
from skinlesion.classes import ISIC2018_CLASSES, ISIC2019_COLUMNS, UnknownLabelError, canonical_label
from skinlesion.metrics.inputs import check_labels

logger = logging.getLogger(__name__)

_EXT = re.compile(r"\.jpe?g$", re.IGNORECASE)
_ISIC2019_CANONICAL = tuple(canonical_label(c) for c in ISIC2019_COLUMNS)


def _layout(classes: Sequence[str]) -> tuple[list[str], list[int | None]]:
    """Header names and, per header column, the index into ``classes`` (None: a zero column)."""
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique; got {classes}.")
    try:
        canon = [canonical_label(c) for c in classes]
    except UnknownLabelError:
        canon = None
    if canon is not None and len(set(canon)) == len(canon):
        pos = {c: i for i, c in enumerate(canon)}
        if set(canon) == set(ISIC2018_CLASSES):
            return list(ISIC2018_CLASSES), [pos[c] for c in ISIC2018_CLASSES]
        if set(canon) in (set(_ISIC2019_CANONICAL), set(_ISIC2019_CANONICAL) - {"UNK"}):
            if "UNK" not in pos:
                logger.warning("ISIC 2019 layout: no UNK class in the model; writing an all-zero UNK column.")
            return list(ISIC2019_COLUMNS), [pos.get(c) for c in _ISIC2019_CANONICAL]
    for c in classes:
        if not str(c) or any(ch in str(c) for ch in ',"\n\r') or str(c) == "image":
            raise ValueError(f"class name {c!r} cannot be a CSV column (empty, 'image', or has a comma/quote/newline).")
    return [str(c) for c in classes], list(range(len(classes)))


def _image_ids(image_ids: Sequence[str], n: int) -> list[str]:
    ids = [_EXT.sub("", str(i).strip()) for i in image_ids]
    if len(ids) != n:
        raise ValueError(f"image_ids has {len(ids)} entries but there are {n} rows; they must match.")
    for row, i in enumerate(ids):
        if not i or any(ch in i for ch in ',"\n\r'):
            raise ValueError(f"image_ids[{row}] = {image_ids[row]!r} is empty or has a comma, quote or newline.")
    seen: set[str] = set()
    for row, i in enumerate(ids):
        if i in seen:
            raise ValueError(f"image_ids[{row}] = {i!r} is a duplicate; each image must appear once.")
        seen.add(i)
    return ids


def _fmt(x: float, decimals: int | None) -> str:
    if decimals is None:  # shortest string that reads back to the same float
        return np.format_float_positional(x, unique=True, trim="0")
    return f"{x:.{decimals}f}"


def _write(path: Any, header: list[str], cols: list[int | None], ids: list[str], values: np.ndarray, decimals: int | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = _csv.writer(fh, lineterminator="\n")  # ids a spreadsheet would run as formulas escaped
        writer.writerow(["image", *header])
        for i, row in zip(ids, values):
            writer.writerow([i, *(_fmt(float(row[c]), decimals) if c is not None else _fmt(0.0, decimals) for c in cols)])
    return path


def write_submission(path: Any, image_ids: Sequence[str], probs: Any, classes: Sequence[str], *, decimals: int | None = None) -> Path:
    """Write predictions as an official ISIC submission CSV.

    Args:
        path: output file (parents are created).
        image_ids: one id per row; a trailing ``.jpg`` is dropped (ISIC ids have no extension).
        probs: class probabilities in [0, 1], shape ``(n, K)``, columns in ``classes`` order.
        classes: the K class names (canonical or dataset-native, e.g. ``AK``).
        decimals: fixed decimals (at least 6); ``None`` writes each value exactly (shortest
            round-trip form), so scores computed from the file equal scores from the array.
    """
    if decimals is not None and (isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 6):
        raise ValueError(f"The 'decimals' parameter must be an integer >= 6 or None. Got {decimals!r} instead.")
    header, cols = _layout(classes)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise ValueError(f"probs must have shape (n_images, {len(classes)}); got {p.shape}.")
    bad = np.flatnonzero(~(np.isfinite(p) & (p >= 0) & (p <= 1)).all(axis=1))
    if bad.size:
        raise ValueError(f"probs row {int(bad[0])} has a value outside [0, 1] or non-finite: {p[bad[0]].tolist()}.")
    return _write(path, header, cols, _image_ids(image_ids, p.shape[0]), p, decimals)


def write_ground_truth(path: Any, image_ids: Sequence[str], y_true: Any, classes: Sequence[str]) -> Path:
    """Write true class indices as a one-hot ISIC ground-truth CSV (same layout as the submission)."""
    header, cols = _layout(classes)
    y = check_labels(y_true, len(classes))
    onehot = np.zeros((y.shape[0], len(classes)))
    onehot[np.arange(y.shape[0]), y] = 1.0
    return _write(path, header, cols, _image_ids(image_ids, y.shape[0]), onehot, None)


@contextlib.contextmanager
def _pandas3_applymap() -> Iterator[None]:
    """isic-challenge-scoring 5.6 calls ``DataFrame.applymap`` (deprecated in pandas 2.1, removed in 3).

    Silence its deprecation warning, or alias it to ``DataFrame.map`` for the call when missing.
    """
    import pandas as pd

    if hasattr(pd.DataFrame, "applymap"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*applymap has been deprecated", category=FutureWarning)
            yield
        return
    pd.DataFrame.applymap = pd.DataFrame.map  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del pd.DataFrame.applymap


def _check_truth_has_positives(truth: Path) -> None:
    """isic-challenge-scoring 5.6 crashes (np.interp on an empty ROC segment) on a class with no positive."""
    import pandas as pd

    table = pd.read_csv(truth, header=0)
    if "image" in table.columns and (table["image"].astype(str) == "ISIC_0035068").any():
        logger.warning("truth_csv %s contains ISIC_0035068, which isic-challenge-scoring weights 0.", truth)
    cols = [c for c in table.columns if c not in ("image", "score_weight", "validation_weight")]
    empty = [c for c in cols if not (pd.to_numeric(table[c], errors="coerce") > 0.5).any()]
    if empty:
        raise ValueError(
            f"truth_csv {str(truth)!r} has no positive image for classes {empty}; isic-challenge-scoring 5.6 "
            "cannot score such a file (its partial AUC fails). Use compute_classification_metrics, which "
            "reports those classes as undefined."
        )


def score_with_isic_challenge_scoring(truth_csv: Any, prediction_csv: Any) -> dict:
    """Score a submission with the official ``isic-challenge-scoring`` package.

    Its definitions: balanced accuracy from argmax labels (exact ties count as wrong), mean
    recall over classes present in the truth; per-class AUC/AP from sklearn on the class
    probability; per-class sensitivity/specificity/PPV/NPV/accuracy/dice from ``prob > 0.5``
    (not argmax), with undefined ratios scored 1.0. It cannot score a truth file in which a class
    has no positive image (raises ``ValueError`` here, before the package would crash).

    Returns:
        ``{"balanced_accuracy": float, "per_category": {class: {metric: float}},
        "macro_average": {metric: float}}``; undefined values are NaN.
    """
    try:
        from isic_challenge_scoring import ClassificationMetric, ClassificationScore, ScoreError
    except ImportError as exc:
        raise ImportError(
            "score_with_isic_challenge_scoring needs the official scorer: pip install 'isic-challenge-scoring>=5.6'"
        ) from exc
    truth, pred = Path(truth_csv), Path(prediction_csv)
    for name, f in (("truth_csv", truth), ("prediction_csv", pred)):
        if not f.is_file():
            raise FileNotFoundError(f"{name} {str(f)!r} does not exist or is not a file.")
    _check_truth_has_positives(truth)
    with _pandas3_applymap(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="rdp")
        try:
            score = ClassificationScore.from_file(truth, pred, ClassificationMetric.BALANCED_ACCURACY)
        except ScoreError as exc:
            raise ValueError(f"isic-challenge-scoring rejected {str(pred)!r} (truth {str(truth)!r}): {exc}") from exc
    per_category = {
        str(cat): {str(k): float(v) for k, v in row.items()} for cat, row in score.per_category.iterrows()
    }
    return {
        "balanced_accuracy": float(score.aggregate["balanced_accuracy"]),
        "per_category": per_category,
        "macro_average": {str(k): float(v) for k, v in score.macro_average.items()},
    }
