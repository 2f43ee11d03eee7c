"""Score a bundle on an official ISIC test set exactly as ``isic-challenge-scoring`` does, UNK included.

How the official scorer (isic-challenge-scoring 5.6, ``load_csv.parse_truth_csv`` and
``metrics.balanced_multiclass_accuracy``) treats the ``UNK`` column of the ISIC 2019 test ground truth:

* the categories are the columns of the *truth* file: ``MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``. A
  submission must carry every one of them (a missing ``UNK`` column is an error), no other;
* truth and prediction labels are the argmax of each row; a row whose maximum is tied is
  "undecided" and counts as wrong;
* balanced accuracy is the mean recall over the categories that have at least one true image (a
  category without one gives 0/0 = NaN, which the mean skips). The 2019 test truth has UNK images,
  so ``UNK`` is a ninth class of the mean: an image whose truth is UNK is right only if the
  submission's UNK column is its row's unique maximum;
* per-category sensitivity/specificity/AUC treat UNK images as negatives of the eight classes;
* image ``ISIC_0035068`` gets weight 0, and a truth file's ``score_weight`` column, when present,
  weights the images.

An eight-class bundle has no UNK output: its submission carries an all-zero UNK column
(:func:`skinlesion.metrics.isic.write_submission`), so every UNK test image counts as an error and
the UNK recall is 0 (at most 8/9 of a perfect BACC). :func:`score_official_test` writes that
submission, computes the scorer's balanced accuracy itself (the same rules, no dependency) and,
when the package is installed, also runs the official scorer on the written files and records both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.errors import DataError

log = logging.getLogger(__name__)

#: The known-bad ISIC 2019 test image the official scorer weights 0.
ZERO_WEIGHT_IMAGES = frozenset({"ISIC_0035068"})


def scorer_balanced_accuracy(truth: pd.DataFrame, pred: pd.DataFrame, weights: pd.Series | None = None) -> dict[str, Any]:
    """Balanced accuracy as isic-challenge-scoring computes it (see the module doc).

    Args:
        truth: one-hot truth, index = image ids, columns = the categories.
        pred: probabilities with the same index and columns.
        weights: per-image weights (default 1; :data:`ZERO_WEIGHT_IMAGES` get 0).

    Returns:
        ``{"balanced_accuracy", "recall": {category: float | None}, "undecided": int}``.
    """
    if list(truth.columns) != list(pred.columns):
        raise ValueError(f"pred columns {list(pred.columns)} must equal the truth columns {list(truth.columns)}.")
    pred = pred.reindex(truth.index)
    if pred.isna().any().any():
        raise ValueError("pred lacks rows or values for some truth images.")
    w = pd.Series(1.0, index=truth.index) if weights is None else weights.reindex(truth.index).astype(float)
    w[w.index.isin(ZERO_WEIGHT_IMAGES)] = 0.0
    t = truth.to_numpy(float)
    p = pred.to_numpy(float)
    y = t.argmax(axis=1)
    yp = p.argmax(axis=1)
    tied = (p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1
    correct = (y == yp) & ~tied
    recall: dict[str, float | None] = {}
    for k, c in enumerate(truth.columns):
        den = float(w[y == k].sum())
        recall[str(c)] = float(w[(y == k) & correct].sum()) / den if den > 0 else None
    defined = [v for v in recall.values() if v is not None]
    return {"balanced_accuracy": float(np.mean(defined)) if defined else float("nan"), "recall": recall,
            "undecided": int(tied.sum())}


def score_official_test(
    bundle: Any, ground_truth_csv: str | Path, images_dir: str | Path, out_dir: str | Path, *,
    metadata_csv: str | Path | None = None, batch_size: int = 32,
) -> dict[str, Any]:
    """Predict every image of an official ISIC 2019 (or 2018) test set with ``bundle``, write
    ``submission.csv`` (official layout, all-zero UNK column for an eight-class bundle) and
    ``official_test.json`` (the scorer's BACC and per-category recall, computed here and, when
    ``isic-challenge-scoring`` is installed, by it). Returns what the JSON holds."""
    from skinlesion.classes import canonical_label
    from skinlesion.data.readers.datasets import read_isic2018, read_isic2019
    from skinlesion.metrics.isic import write_submission

    gt_path = Path(ground_truth_csv)
    if not gt_path.is_file():
        raise DataError(f"Official test ground truth {gt_path} not found (skinlesion data download isic2019 --split test).")
    header = pd.read_csv(gt_path, nrows=0).columns
    reader = read_isic2019 if "SCC" in header else read_isic2018
    table = reader(gt_path, images_dir, metadata_csv=metadata_csv)
    unknown = sorted(set(table.classes) - set(bundle.classes) - {"UNK"})
    if unknown:
        raise DataError(f"{gt_path} has classes {unknown} that the bundle {bundle.path} does not know ({list(bundle.classes)}).")
    pred = bundle.predict_table(table, batch_size=batch_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = table.frame["image_id"].astype(str).tolist()
    sub = write_submission(out / "submission.csv", ids, pred.probs, bundle.classes)
    truth = pd.read_csv(gt_path, dtype={"image": str}).set_index("image")
    weights = truth["score_weight"] if "score_weight" in truth.columns else None
    truth = truth.drop(columns=[c for c in ("score_weight", "validation_weight") if c in truth.columns])
    submitted = pd.read_csv(sub, dtype={"image": str}).set_index("image")
    missing = [c for c in truth.columns if c not in submitted.columns]
    if missing:
        raise DataError(f"The submission lacks the truth's columns {missing}: bundle classes {list(bundle.classes)}.")
    ours = scorer_balanced_accuracy(truth.loc[ids], submitted.loc[ids, list(truth.columns)], weights)
    n_unk = int((table.frame["label"] == "UNK").sum())
    result: dict[str, Any] = {
        "ground_truth": str(gt_path), "n_images": len(ids), "n_unk": n_unk,
        "bundle_classes": list(bundle.classes),
        "categories": [str(c) for c in truth.columns],
        "unk_handling": (
            "as isic-challenge-scoring: UNK is a category of the balanced accuracy when the truth has UNK images; "
            + ("this bundle has a UNK output" if "UNK" in bundle.classes else
               "this bundle has no UNK output, so its submission's UNK column is 0 and every UNK image counts as an error")
        ),
        "balanced_accuracy": ours["balanced_accuracy"], "recall": ours["recall"], "undecided": ours["undecided"],
        "files": {"submission": str(sub)},
    }
    try:
        from skinlesion.metrics.isic import score_with_isic_challenge_scoring

        official = score_with_isic_challenge_scoring(gt_path, sub)
        result["official"] = {"balanced_accuracy": official["balanced_accuracy"],
                              "agrees": bool(np.isclose(official["balanced_accuracy"], ours["balanced_accuracy"]))}
    except ImportError:
        result["official"] = {"note": "isic-challenge-scoring is not installed; computed with its rules only"}
    except ValueError as e:  # e.g. a category with no positive image, which the scorer cannot score
        result["official"] = {"note": str(e)}
    result["canonical_labels"] = {c: canonical_label(c) for c in truth.columns}
    (out / "official_test.json").write_text(json.dumps(result, indent=2))
    return result
