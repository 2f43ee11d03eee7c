"""Lesion-level cluster bootstrap: grouping, determinism, NaN handling, speed, errors."""

from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np
import pytest

from skinlesion.classes import ISIC2018_CLASSES
from skinlesion.metrics import bootstrap_ci, bootstrap_difference_ci, compute_classification_metrics, standard_metric_fns
from skinlesion.metrics.bootstrap import _resample_index

CLASSES = list(ISIC2018_CLASSES)


def _data(n: int = 400, k: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(p.argmax(axis=1) == y))


def test_resample_keeps_all_images_of_a_drawn_lesion_together() -> None:
    sizes = np.array([3, 1, 4, 2])
    codes = np.repeat(np.arange(4), sizes)
    order = np.argsort(codes, kind="stable")
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = _resample_index(rng, order, starts, sizes)
        per_image = np.bincount(idx, minlength=codes.size)
        for g in range(4):
            counts = per_image[codes == g]
            assert (counts == counts[0]).all()  # a lesion comes with all of its images, each equally often
        assert sum(per_image[codes == g][0] for g in range(4)) == 4  # 4 lesions drawn


def test_cluster_bootstrap_is_wider_than_image_bootstrap_for_duplicated_images() -> None:
    # 40 lesions x 10 identical images: only 40 independent observations
    y1, p1 = _data(n=40, seed=1)
    y, p = np.repeat(y1, 10), np.repeat(p1, 10, axis=0)
    groups = np.repeat([f"HAM_{i:07d}" for i in range(40)], 10)
    by_lesion = bootstrap_ci(y, p, groups, {"acc": _accuracy}, n_boot=400)["acc"]
    by_image = bootstrap_ci(y, p, None, {"acc": _accuracy}, n_boot=400)["acc"]
    indep = bootstrap_ci(y1, p1, None, {"acc": _accuracy}, n_boot=400)["acc"]
    w_lesion, w_image, w_indep = (r["high"] - r["low"] for r in (by_lesion, by_image, indep))
    assert w_lesion > 2 * w_image
    assert w_lesion == pytest.approx(w_indep, rel=0.35)


def test_estimate_interval_and_determinism() -> None:
    y, p = _data()
    groups = np.arange(len(y)) // 2
    a = bootstrap_ci(y, p, groups, {"acc": _accuracy}, n_boot=300, seed=7)["acc"]
    b = bootstrap_ci(y, p, groups, {"acc": _accuracy}, n_boot=300, seed=7)["acc"]
    c = bootstrap_ci(y, p, groups, {"acc": _accuracy}, n_boot=300, seed=8)["acc"]
    assert a == b
    assert (a["low"], a["high"]) != (c["low"], c["high"])
    assert a["estimate"] == _accuracy(y, p)
    assert a["low"] < a["estimate"] < a["high"]
    assert a["n_boot"] == a["n_boot_valid"] == 300 and a["alpha"] == 0.05
    narrow = bootstrap_ci(y, p, groups, {"acc": _accuracy}, n_boot=300, seed=7, alpha=0.5)["acc"]
    assert a["low"] < narrow["low"] < narrow["high"] < a["high"]


def test_nan_resamples_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    y, p = _data(n=200)
    y = np.where(y == 6, 0, y)
    y[0] = 6  # class 6 lives in one lesion of 100
    groups = np.arange(200) // 2

    def sens6(yb: np.ndarray, pb: np.ndarray) -> float:
        pos = yb == 6
        return float(np.mean(pb[pos].argmax(axis=1) == 6)) if pos.any() else math.nan

    with caplog.at_level(logging.WARNING, logger="skinlesion.metrics.bootstrap"):
        r = bootstrap_ci(y, p, groups, {"sens6": sens6, "never": lambda a, b: math.nan}, n_boot=500)
    # P(lesion drawn at least once in 100 draws of 100) = 1 - 0.99**100 ~ 0.634
    assert 0.55 * 500 < r["sens6"]["n_boot_valid"] < 0.72 * 500
    assert r["never"]["n_boot_valid"] == 0
    assert math.isnan(r["never"]["low"]) and math.isnan(r["never"]["high"])
    assert "metric 'never' was undefined in 500 of 500 resamples" in caplog.text


def test_standard_metric_fns_agree_with_compute_classification_metrics() -> None:
    y, p = _data(seed=3)
    m = compute_classification_metrics(y, p, CLASSES)
    fns = standard_metric_fns(CLASSES)
    for key in ("bacc", "malignant_bacc", "accuracy", "f1_macro", "f1_weighted", "auc_macro", "ece"):
        assert fns[key](y, p) == pytest.approx(m[key], abs=1e-12), key
    for c in CLASSES:
        assert fns[f"sensitivity_{c}"](y, p) == pytest.approx(m["per_class"][c]["sensitivity"], abs=1e-12)
        assert fns[f"specificity_{c}"](y, p) == pytest.approx(m["per_class"][c]["specificity"], abs=1e-12)
        assert fns[f"auc_{c}"](y, p) == pytest.approx(m["per_class"][c]["auc"], abs=1e-12)


def test_present_makes_macro_metrics_nan_when_a_required_class_is_missing() -> None:
    y, p = _data(n=50, seed=4)
    strict = standard_metric_fns(CLASSES, present=range(7))
    loose = standard_metric_fns(CLASSES)
    y_missing = np.where(y == 3, 0, y)
    for key in ("bacc", "malignant_bacc", "f1_macro", "auc_macro"):
        assert math.isnan(strict[key](y_missing, p)), key
        assert not math.isnan(loose[key](y_missing, p)), key
    assert strict["bacc"](y, p) == loose["bacc"](y, p)


def test_thousand_resamples_of_isic_sized_set_are_fast() -> None:
    y, p = _data(n=1300, seed=5)
    groups = np.random.default_rng(0).integers(0, 900, 1300)
    fns = standard_metric_fns(CLASSES)
    t0 = time.perf_counter()
    r = bootstrap_ci(y, p, groups, {"bacc": fns["bacc"]}, n_boot=1000)
    assert time.perf_counter() - t0 < 3.0  # ~0.1 s on a laptop core
    assert r["bacc"]["n_boot_valid"] == 1000


def test_all_standard_metrics_run_without_leaking_warnings() -> None:
    y, p = _data(n=120, seed=6)
    groups = np.arange(120) // 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = bootstrap_ci(y, p, groups, standard_metric_fns(CLASSES), n_boot=50)
    assert set(r) >= {"bacc", "malignant_bacc", "auc_macro", "ece", "sensitivity_MEL", "specificity_VASC"}
    for name, iv in r.items():
        if iv["n_boot_valid"]:
            assert iv["low"] <= iv["high"], name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_boot": 0}, r"The 'n_boot' parameter must be a positive integer. Got 0 instead"),
        ({"alpha": 1.5}, r"The 'alpha' parameter must be a float in \(0, 1\). Got 1.5"),
        ({"metrics": {}}, r"The 'metrics' parameter must be a non-empty dict"),
        ({"metrics": {"x": 3}}, r"metrics\['x'\] must be callable"),
        ({"groups": [1, 2]}, r"groups must have one entry per image \(4\); got shape \(2,\)"),
        ({"groups": ["a", None, "b", "b"]}, r"groups\[1\] is missing \(None/NaN\)"),
        ({"groups": [1, 1, 1, 1]}, r"groups holds 1 distinct lesion id\(s\); the bootstrap needs at least 2"),
    ],
)
def test_bootstrap_errors(kwargs: dict, message: str) -> None:
    y = np.array([0, 1, 0, 1])
    p = np.array([[0.7, 0.3], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])
    args = {"groups": [1, 1, 2, 2], "metrics": {"acc": _accuracy}, **kwargs}
    groups, metrics = args.pop("groups"), args.pop("metrics")
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(y, p, groups, metrics, **args)


def test_present_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"present must hold class indices in \[0, 7\); got \[9\]"):
        standard_metric_fns(CLASSES, present=[9])


def test_difference_ci_uses_the_resamples_of_bootstrap_ci_for_both_sides() -> None:
    y, p = _data(n=300, seed=9)
    k, groups = p.shape[1], np.arange(300) // 3
    ref = p.argmax(axis=1)
    better = np.where(np.arange(300) % 5 == 0, y, ref)  # corrects some of the reference's errors

    def acc(yt: np.ndarray, pred: np.ndarray) -> float:
        return float(np.mean(pred == yt))

    diff = bootstrap_difference_ci(better, ref, groups, acc, y_true=y, n_boot=300, seed=3)
    both = np.concatenate([np.eye(k)[better], np.eye(k)[ref]], axis=1) / 2  # the two sides as one metric
    packed = {"d": lambda yb, pb: acc(yb, pb[:, :k].argmax(1)) - acc(yb, pb[:, k:].argmax(1))}
    assert diff == bootstrap_ci(y, both, groups, packed, n_boot=300, seed=3)["d"]
    assert diff["estimate"] == acc(y, better) - acc(y, ref) and 0 < diff["low"] < diff["estimate"] < diff["high"]
    alone = bootstrap_ci(y, np.eye(k)[ref], groups, {"acc": lambda yb, pb: acc(yb, pb.argmax(1))}, n_boot=300, seed=3)["acc"]
    assert diff["high"] - diff["low"] < alone["high"] - alone["low"]  # paired: the lesions' difficulty cancels


def test_difference_ci_of_per_image_values() -> None:
    rng = np.random.default_rng(2)
    values, reference = rng.uniform(0.3, 0.6, 80), rng.uniform(0.3, 0.6, 80)
    r = bootstrap_difference_ci(values, reference, np.arange(80) // 4, np.mean, n_boot=200)
    assert r["estimate"] == pytest.approx(values.mean() - reference.mean()) and r["low"] < r["estimate"] < r["high"]
    same = bootstrap_difference_ci(values, values, None, np.mean, n_boot=50)
    assert same["estimate"] == same["low"] == same["high"] == 0 and same["n_boot_valid"] == 50
    one_lesion = bootstrap_difference_ci(values, reference, ["a"] * 80, np.mean, n_boot=20)
    assert one_lesion["low"] == one_lesion["high"] == pytest.approx(r["estimate"])  # every resample is the whole set


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_boot": 0}, r"The 'n_boot' parameter must be a positive integer. Got 0 instead"),
        ({"alpha": 0.0}, r"The 'alpha' parameter must be a float in \(0, 1\). Got 0.0"),
        ({"metric": "bacc"}, r"The 'metric' parameter must be callable. Got str instead"),
        ({"reference": [0, 1]}, r"'values' and 'reference' parameters must hold the same number \(>= 1\) of images"),
        ({"y_true": [0, 1]}, r"The 'y_true' parameter must hold one label per image \(4\). Got shape \(2,\)"),
        ({"groups": [1, 2]}, r"groups must have one entry per image \(4\); got shape \(2,\)"),
    ],
)
def test_difference_ci_errors(kwargs: dict, message: str) -> None:
    args = {"values": [0, 1, 1, 0], "reference": [0, 1, 0, 0], "groups": [1, 1, 2, 2], "metric": _accuracy_of_labels,
            "y_true": [0, 1, 1, 1], **kwargs}
    with pytest.raises(ValueError, match=message):
        bootstrap_difference_ci(args.pop("values"), args.pop("reference"), args.pop("groups"), args.pop("metric"), **args)


def _accuracy_of_labels(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(pred == y))
