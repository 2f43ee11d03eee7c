"""ISIC CSV files and parity with the official ``isic-challenge-scoring`` package.

The official scorer's definitions (read from isic_challenge_scoring 5.6, metrics.py and
classification.py): balanced accuracy from argmax labels, exact ties counted as wrong
("undecided"), mean recall over the classes present in the truth; per-class AUC/AP from sklearn
on the class column; per-class sensitivity/specificity/PPV/NPV from ``prob > 0.5``, not argmax.
Parity is asserted for the shared definitions; the differences are pinned by tests below.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from skinlesion.classes import DERMAMNIST_CLASSES, ISIC2018_CLASSES
from skinlesion.metrics import (
    compute_classification_metrics,
    score_with_isic_challenge_scoring,
    write_ground_truth,
    write_submission,
)

pytest.importorskip("isic_challenge_scoring")


def _data(n: int, k: int, seed: int, *, present: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, present or k, n)
    logits = rng.normal(size=(n, k)) * 1.5
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    ids = [f"ISIC_{i:07d}" for i in rng.choice(9_000_000, size=n, replace=False)]  # unsorted ids
    return ids, y, p


def _score(tmp_path, ids, y, p, classes):
    truth = write_ground_truth(tmp_path / "truth.csv", ids, y, classes)
    pred = write_submission(tmp_path / "pred.csv", ids, p, classes)
    return score_with_isic_challenge_scoring(truth, pred)


@pytest.mark.parametrize("classes", [ISIC2018_CLASSES, DERMAMNIST_CLASSES], ids=["isic-order", "dermamnist-order"])
def test_isic2018_parity_bacc_and_auc(tmp_path, classes) -> None:
    classes = list(classes)
    ids, y, p = _data(n=400, k=7, seed=0)
    assert len(np.unique(y)) == 7
    ours = compute_classification_metrics(y, p, classes)
    official = _score(tmp_path, ids, y, p, classes)
    assert set(official["per_category"]) == set(ISIC2018_CLASSES)
    assert ours["bacc"] == pytest.approx(official["balanced_accuracy"], abs=1e-9)
    for c in classes:
        assert ours["per_class"][c]["auc"] == pytest.approx(official["per_category"][c]["auc"], abs=1e-9), c
        assert ours["per_class"][c]["ap"] == pytest.approx(official["per_category"][c]["ap"], abs=1e-9), c
    assert ours["auc_macro"] == pytest.approx(official["macro_average"]["auc"], abs=1e-9)


def test_isic2019_parity_with_native_names(tmp_path) -> None:
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    ids, y, p = _data(n=400, k=9, seed=1)
    ours = compute_classification_metrics(y, p, classes)
    official = _score(tmp_path, ids, y, p, classes)
    assert (tmp_path / "pred.csv").read_text().splitlines()[0] == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
    assert ours["bacc"] == pytest.approx(official["balanced_accuracy"], abs=1e-9)
    for c in classes:
        assert ours["per_class"][c]["auc"] == pytest.approx(official["per_category"][c]["auc"], abs=1e-9), c


def test_bacc_over_present_classes_matches_official_function() -> None:
    from isic_challenge_scoring.metrics import balanced_multiclass_accuracy

    classes = list(ISIC2018_CLASSES)
    ids, y, p = _data(n=300, k=7, seed=5, present=6)  # VASC absent from the truth, but predicted
    assert (p.argmax(axis=1) == 6).any()
    truth = pd.DataFrame(np.eye(7)[y], index=ids, columns=classes)
    pred = pd.DataFrame(p, index=ids, columns=classes)
    official = balanced_multiclass_accuracy(truth, pred, pd.Series(1.0, index=ids))
    with pytest.warns(UserWarning, match=r"\['VASC'\] are absent"):
        ours = compute_classification_metrics(y, p, classes)
    assert ours["bacc"] == pytest.approx(official, abs=1e-12)


def test_scorer_refuses_truth_with_a_class_without_positives(tmp_path) -> None:
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]  # no UNK: an all-zero UNK column
    ids, y, p = _data(n=50, k=8, seed=6)
    with pytest.raises(ValueError, match=r"truth_csv .* has no positive image for classes \['UNK'\]"):
        _score(tmp_path, ids, y, p, classes)
    header = (tmp_path / "pred.csv").read_text().splitlines()[0]
    assert header == "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"
    assert all(line.endswith(",0.0") for line in (tmp_path / "pred.csv").read_text().splitlines()[1:])


def test_official_per_class_sensitivity_thresholds_at_half_not_argmax(tmp_path) -> None:
    ids, y, p = _data(n=300, k=7, seed=2)
    classes = list(ISIC2018_CLASSES)
    official = _score(tmp_path, ids, y, p, classes)
    ours = compute_classification_metrics(y, p, classes)
    differs = 0
    for j, c in enumerate(classes):
        thresholded = float(np.mean(p[y == j, j] > 0.5))
        assert official["per_category"][c]["sensitivity"] == pytest.approx(thresholded, abs=1e-12)
        differs += abs(ours["per_class"][c]["sensitivity"] - thresholded) > 1e-9
    assert differs > 0  # so our argmax sensitivity is a different (documented) definition


def test_official_bacc_counts_exact_ties_as_wrong(tmp_path) -> None:
    classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    p = np.full((7, 7), 0.02)
    p[np.arange(7), np.arange(7)] = 0.88
    p[0] = [0.45, 0.45, 0.02, 0.02, 0.02, 0.02, 0.02]  # MEL image, tie MEL/NV
    y = np.arange(7)
    ids = [f"ISIC_{i:07d}" for i in range(7)]
    official = _score(tmp_path, ids, y, p, classes)
    ours = compute_classification_metrics(y, p, classes)
    assert ours["bacc"] == pytest.approx(1.0)  # argmax takes the first tied class (MEL)
    assert official["balanced_accuracy"] == pytest.approx(6 / 7)  # "undecided" is wrong


def test_submission_file_format(tmp_path) -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1], [1e-9, 1 - 6e-9, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9]])
    classes = list(DERMAMNIST_CLASSES)  # AKIEC, BCC, BKL, DF, MEL, NV, VASC
    path = write_submission(tmp_path / "sub" / "pred.csv", ["ISIC_0000001.jpg", "ISIC_0000002"], probs, classes)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    assert lines[1].startswith("ISIC_0000001,")  # extension dropped
    back = pd.read_csv(path, index_col="image")
    np.testing.assert_array_equal(back[classes].to_numpy(), probs)  # exact round trip, columns reordered
    fixed = write_submission(tmp_path / "fixed.csv", ["a", "b"], probs, classes, decimals=6)
    assert fixed.read_text().splitlines()[1] == "a,0.100000,0.100000,0.200000,0.100000,0.300000,0.100000,0.100000"


def test_ground_truth_file_is_one_hot(tmp_path) -> None:
    path = write_ground_truth(tmp_path / "gt.csv", ["x1", "x2"], [4, 0], list(ISIC2018_CLASSES))
    assert path.read_text().splitlines() == [
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC",
        "x1,0.0,0.0,0.0,0.0,1.0,0.0,0.0",
        "x2,1.0,0.0,0.0,0.0,0.0,0.0,0.0",
    ]


def test_other_class_sets_keep_their_names_and_order(tmp_path) -> None:
    path = write_submission(tmp_path / "p.csv", ["a"], np.array([[0.25, 0.75]]), ["benign", "malignant"])
    assert path.read_text().splitlines() == ["image,benign,malignant", "a,0.25,0.75"]


def test_wrapper_works_without_dataframe_applymap(tmp_path, monkeypatch) -> None:
    monkeypatch.delattr(pd.DataFrame, "applymap", raising=False)  # as in pandas 3
    ids, y, p = _data(n=60, k=7, seed=3, present=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = _score(tmp_path, ids, y, p, list(ISIC2018_CLASSES))
    assert 0.0 <= official["balanced_accuracy"] <= 1.0
    assert not hasattr(pd.DataFrame, "applymap")  # the alias is removed again


@pytest.mark.parametrize(
    ("ids", "probs", "kwargs", "message"),
    [
        (["a", "a"], np.full((2, 2), 0.5), {}, r"image_ids\[1\] = 'a' is a duplicate"),
        (["a", "b,c"], np.full((2, 2), 0.5), {}, r"image_ids\[1\] = 'b,c' is empty or has a comma"),
        (["a"], np.full((2, 2), 0.5), {}, r"image_ids has 1 entries but there are 2 rows"),
        (["a", "b"], np.array([[1.5, -0.5], [0.5, 0.5]]), {}, r"probs row 0 has a value outside \[0, 1\]"),
        (["a", "b"], np.full((2, 3), 0.3), {}, r"probs must have shape \(n_images, 2\); got \(2, 3\)"),
        (["a", "b"], np.full((2, 2), 0.5), {"decimals": 3}, r"The 'decimals' parameter must be an integer >= 6"),
    ],
)
def test_write_submission_errors(tmp_path, ids, probs, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        write_submission(tmp_path / "p.csv", ids, probs, ["benign", "malignant"], **kwargs)


def test_bad_class_names_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"class name 'a,b' cannot be a CSV column"):
        write_ground_truth(tmp_path / "g.csv", ["x"], [0], ["a,b", "c"])
    with pytest.raises(ValueError, match=r"classes must be unique"):
        write_ground_truth(tmp_path / "g.csv", ["x"], [0], ["MEL", "MEL"])


def test_scorer_errors_name_the_files(tmp_path) -> None:
    classes = list(ISIC2018_CLASSES)
    ids, y, p = _data(n=20, k=7, seed=4)
    truth = write_ground_truth(tmp_path / "truth.csv", ids, y, classes)
    pred = write_submission(tmp_path / "pred.csv", ids[:-1], p[:-1], classes)
    with pytest.raises(ValueError, match=r"isic-challenge-scoring rejected .*pred.csv.*Missing images in CSV"):
        score_with_isic_challenge_scoring(truth, pred)
    with pytest.raises(FileNotFoundError, match=r"prediction_csv .*nope.csv' does not exist"):
        score_with_isic_challenge_scoring(truth, tmp_path / "nope.csv")


def test_scorer_missing_package_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "isic_challenge_scoring", None)
    with pytest.raises(ImportError, match=r"pip install 'isic-challenge-scoring>=5.6'"):
        score_with_isic_challenge_scoring(tmp_path / "t.csv", tmp_path / "p.csv")
