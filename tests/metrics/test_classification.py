"""Classification metrics: hand-computed cases, sklearn cross-checks, degenerate input, errors."""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from skinlesion.classes import ISIC2018_CLASSES
from skinlesion.metrics import (
    UndefinedMetricWarning,
    balanced_accuracy,
    compute_classification_metrics,
    per_class_metrics,
)

CLASSES = list(ISIC2018_CLASSES)


def _random(n: int = 300, k: int = 7, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def _onehotish(pred: list[int], k: int) -> np.ndarray:
    p = np.full((len(pred), k), 0.1 / (k - 1))
    p[np.arange(len(pred)), pred] = 0.9
    return p


def test_balanced_accuracy_hand_computed() -> None:
    # recalls: class 0 -> 1/2, class 1 -> 2/2, class 2 -> 0/1
    assert balanced_accuracy([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]) == pytest.approx(0.5)


def test_balanced_accuracy_matches_sklearn_and_skips_absent_classes() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 200)  # classes 5 and 6 absent from y_true
    yp = rng.integers(0, 7, 200)  # ... but predicted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(y, yp)
    assert balanced_accuracy(y, yp, n_classes=7) == pytest.approx(expected, abs=1e-12)


def test_compute_metrics_match_sklearn() -> None:
    y, p = _random()
    m = compute_classification_metrics(y, p, CLASSES)
    yp = p.argmax(axis=1)
    assert m["n"] == 300
    assert m["bacc"] == pytest.approx(balanced_accuracy_score(y, yp), abs=1e-12)
    assert m["accuracy"] == pytest.approx(float(np.mean(y == yp)), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, yp, average="macro"), abs=1e-12)
    assert m["f1_weighted"] == pytest.approx(f1_score(y, yp, average="weighted"), abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y, yp, labels=range(7)).tolist()
    aucs = [roc_auc_score(y == j, p[:, j]) for j in range(7)]
    for j, c in enumerate(CLASSES):
        pc = m["per_class"][c]
        assert pc["auc"] == pytest.approx(aucs[j], abs=1e-12)
        assert pc["ap"] == pytest.approx(average_precision_score(y == j, p[:, j]), abs=1e-12)
        assert pc["support"] == int((y == j).sum())
    assert m["auc_macro"] == pytest.approx(float(np.mean(aucs)), abs=1e-12)
    assert m["classes"] == CLASSES
    assert m["absent_classes"] == []
    json.dumps(m, allow_nan=False)  # JSON-serialisable, no NaN


def test_auc_handles_tied_scores_like_sklearn() -> None:
    y, p = _random(seed=3)
    p = np.round(p, 1)
    p = p / p.sum(axis=1, keepdims=True)  # many exact ties in each column
    m = compute_classification_metrics(y, p, CLASSES)
    for j, c in enumerate(CLASSES):
        assert m["per_class"][c]["auc"] == pytest.approx(roc_auc_score(y == j, p[:, j]), abs=1e-12)


def test_per_class_rates_hand_computed() -> None:
    # 3 classes, true  [0, 0, 0, 1, 1, 2], pred [0, 0, 1, 1, 2, 2]
    y = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    pc = per_class_metrics(y, _onehotish(pred, 3), pred, ["MEL", "NV", "BCC"])
    # class 0: TP 2, FN 1, FP 0, TN 3
    assert pc["MEL"]["sensitivity"] == pytest.approx(2 / 3)
    assert pc["MEL"]["specificity"] == pytest.approx(1.0)
    assert pc["MEL"]["ppv"] == pytest.approx(1.0)
    assert pc["MEL"]["npv"] == pytest.approx(3 / 4)
    assert pc["MEL"]["f1"] == pytest.approx(4 / 5)
    # class 1: TP 1, FN 1, FP 1, TN 3
    assert pc["NV"]["sensitivity"] == pytest.approx(0.5)
    assert pc["NV"]["specificity"] == pytest.approx(3 / 4)
    assert pc["NV"]["ppv"] == pytest.approx(0.5)
    assert pc["NV"]["f1"] == pytest.approx(0.5)
    assert pc["BCC"]["support"] == 1 and isinstance(pc["BCC"]["support"], int)


@pytest.mark.filterwarnings("ignore::skinlesion.metrics.UndefinedMetricWarning")
def test_malignant_bacc_is_mean_sensitivity_of_malignant_classes() -> None:
    classes = ["MEL", "NV", "BCC", "AKIEC"]
    y = [0, 0, 1, 1, 2, 2, 3, 3]
    pred = [0, 1, 1, 1, 2, 2, 0, 0]  # MEL 1/2, BCC 2/2, AKIEC 0/2
    m = compute_classification_metrics(y, _onehotish(pred, 4), classes)
    assert m["malignant_bacc"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["bacc"] == pytest.approx((0.5 + 1.0 + 1.0 + 0.0) / 4)


def test_malignant_bacc_accepts_dataset_native_names_and_is_none_without_malignant_classes() -> None:
    y = [0, 1, 1, 0]
    pred = [0, 1, 0, 0]
    m = compute_classification_metrics(y, _onehotish(pred, 2), ["AK", "NV"])  # ISIC 2019 name for AKIEC
    assert m["malignant_bacc"] == pytest.approx(1.0)
    m = compute_classification_metrics(y, _onehotish(pred, 2), ["NV", "BKL"])
    assert m["malignant_bacc"] is None


def test_absent_class_gives_nan_and_warning_not_crash() -> None:
    y, p = _random(seed=2)
    keep = y != 5  # DF absent
    y, p = y[keep], p[keep]
    with pytest.warns(UndefinedMetricWarning, match=r"\['DF'\] are absent from y_true"):
        m = compute_classification_metrics(y, p, CLASSES)
    df = m["per_class"]["DF"]
    assert df["sensitivity"] is None and df["auc"] is None and df["ap"] is None and df["f1"] is None
    assert df["support"] == 0
    assert df["specificity"] is not None  # still defined: there are negatives
    assert m["absent_classes"] == ["DF"]
    yp = p.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["bacc"] == pytest.approx(balanced_accuracy_score(y, yp), abs=1e-12)
    present = [c for c in CLASSES if c != "DF"]
    f1s = f1_score(y, yp, labels=[CLASSES.index(c) for c in present], average=None)
    assert m["f1_macro"] == pytest.approx(float(np.mean(f1s)), abs=1e-12)
    assert m["auc_macro"] == pytest.approx(np.mean([m["per_class"][c]["auc"] for c in present]), abs=1e-12)
    json.dumps(m, allow_nan=False)


def test_never_predicted_class_has_undefined_ppv() -> None:
    y = [0, 1, 2, 2]
    pred = [0, 1, 1, 1]
    with pytest.warns(UndefinedMetricWarning, match=r"\['BCC'\] are never predicted"):
        pc = per_class_metrics(y, _onehotish(pred, 3), pred, ["MEL", "NV", "BCC"])
    assert math.isnan(pc["BCC"]["ppv"])
    assert pc["BCC"]["f1"] == 0.0


@pytest.mark.filterwarnings("ignore::skinlesion.metrics.UndefinedMetricWarning")
def test_explicit_y_pred_overrides_argmax() -> None:
    y, p = _random(seed=4)
    yp = np.zeros_like(y)  # always MEL
    m = compute_classification_metrics(y, p, CLASSES, y_pred=yp)
    assert m["per_class"]["MEL"]["sensitivity"] == pytest.approx(1.0)
    assert m["bacc"] == pytest.approx(1 / 7)
    assert m["per_class"]["MEL"]["auc"] == pytest.approx(roc_auc_score(y == 0, p[:, 0]))  # AUC still from probs


def test_tied_top_probabilities_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    p = np.array([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1]])
    with caplog.at_level(logging.WARNING, logger="skinlesion.metrics.classification"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            compute_classification_metrics([0, 1], p, ["MEL", "NV", "BCC"])
    assert "1 image(s) have tied top probabilities" in caplog.text


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1], np.array([0.5, 0.5]), r"probs must be a 2-D array"),
        ([0, 1], np.full((2, 3), 1 / 3), r"probs has 3 columns but there are 2 classes"),
        ([0, 1], np.array([[np.nan, 1.0], [0.5, 0.5]]), r"probs row 0 has a non-finite value"),
        ([0, 1], np.array([[0.5, 0.5], [1.5, -0.5]]), r"probs row 1 has a negative value"),
        ([0, 1], np.array([[0.5, 0.5], [2.0, 3.0]]), r"probs row 1 sums to 5.*Did you pass logits"),
        ([0, 2], np.full((2, 2), 0.5), r"y_true\[1\] = 2 is out of range; class indices must be in \[0, 2\)"),
        ([0, -1], np.full((2, 2), 0.5), r"y_true\[1\] = -1 is out of range"),
        ([0, 0.5], np.full((2, 2), 0.5), r"y_true must hold integer class indices; got y_true\[1\] = 0.5"),
        (["MEL", "NV"], np.full((2, 2), 0.5), r"y_true must hold integer class indices; got dtype"),
        ([[0, 1]], np.full((2, 2), 0.5), r"y_true must be a 1-D array"),
        ([], np.zeros((0, 2)), r"y_true is empty"),
        ([0, 1, 1], np.full((2, 2), 0.5), r"y_true has 3 entries but probs has 2 rows"),
    ],
)
def test_input_validation_errors(y: list, p: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_classification_metrics(y, p, ["MEL", "NV"])


def test_duplicate_classes_and_bad_y_pred_are_rejected() -> None:
    p = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r"classes must be unique"):
        compute_classification_metrics([0, 1], p, ["MEL", "MEL"])
    with pytest.raises(ValueError, match=r"y_pred has 1 entries but y_true has 2"):
        compute_classification_metrics([0, 1], p, ["MEL", "NV"], y_pred=[0])
    with pytest.raises(ValueError, match=r"y_pred\[0\] = 5 is out of range"):
        per_class_metrics([0, 1], p, [5, 0], ["MEL", "NV"])
    with pytest.raises(ValueError, match=r"y_true has 2 entries but y_pred has 3"):
        balanced_accuracy([0, 1], [0, 1, 1])
