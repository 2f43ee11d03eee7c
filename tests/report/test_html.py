"""The self-contained HTML evaluation report and its figures."""

from __future__ import annotations

import base64
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest

import skinlesion
from skinlesion.classes import ISIC2018_CLASSES
from skinlesion.metrics import bootstrap_ci, compute_classification_metrics, reliability_curve, standard_metric_fns
from skinlesion.report.html import write_evaluation_report
from skinlesion.report.plots import confusion_matrix_png, reliability_diagram_png, roc_curves_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('x')</script>"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)


def _parse(path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _inputs(classes: list[str], n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    logits = rng.normal(size=(n, len(classes)))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    groups = np.arange(n) // 2
    return y, p, groups


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    classes = list(ISIC2018_CLASSES)
    y, p, groups = _inputs(classes)
    metrics = compute_classification_metrics(y, p, classes)
    intervals = bootstrap_ci(y, p, groups, standard_metric_fns(classes), n_boot=60)
    out = write_evaluation_report(
        tmp_path_factory.mktemp("r") / "sub" / "report.html",
        title="Run 7 evaluation",
        metrics=metrics,
        intervals=intervals,
        y_true=y,
        probs=p,
        classes=classes,
        provenance={"checkpoint": "runs/7/ckpt", "backbone": "efficientnet_lite0", "split_hash": "abc123", "dataset": "HAM10000"},
        notes=["Test split of a lesion-disjoint manifest."],
    )
    return out, metrics, intervals


def test_report_parses_and_contains_the_given_numbers(report) -> None:
    path, metrics, intervals = report
    parsed = _parse(path)
    text = " ".join(parsed.text)
    for key in ("bacc", "malignant_bacc", "accuracy", "f1_macro", "f1_weighted", "auc_macro", "ece"):
        assert f"{metrics[key]:.4f}" in text, key
        assert f"{intervals[key]['low']:.4f} \u2013 {intervals[key]['high']:.4f}" in text, key
    for c, pc in metrics["per_class"].items():
        for key in ("sensitivity", "specificity", "ppv", "npv", "auc", "ap"):
            assert f"{pc[key]:.4f}" in text, (c, key)
    mel = intervals["sensitivity_MEL"]
    assert f"[{mel['low']:.4f}, {mel['high']:.4f}]" in text
    assert "95% CI (lesion bootstrap)" in text and "60 resamples" in text
    for value in ("runs/7/ckpt", "efficientnet_lite0", "abc123", "HAM10000", f"skinlesion {skinlesion.__version__}"):
        assert value in text
    assert "Test split of a lesion-disjoint manifest." in text
    assert "not a diagnosis" in text.lower() and "decision support" in text


def test_report_is_self_contained_with_embedded_pngs(report) -> None:
    path, _, _ = report
    parsed = _parse(path)
    imgs = [a for tag, a in parsed.attrs if tag == "img"]
    assert len(imgs) == 3
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(a["src"].split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not {"script", "link", "iframe"} & set(parsed.tags)
    for _, a in parsed.attrs:
        for attr in ("src", "href"):
            assert not str(a.get(attr, "")).startswith(("http:", "https:", "//")), a


def test_malicious_title_class_and_provenance_are_escaped(tmp_path) -> None:
    classes = ["MEL", EVIL, "NV"]
    y, p, groups = _inputs(classes, n=60, seed=1)
    metrics = compute_classification_metrics(y, p, classes)
    path = write_evaluation_report(
        tmp_path / "r.html",
        title=f"Eval {EVIL}",
        metrics=metrics,
        intervals=None,
        y_true=y,
        probs=p,
        classes=classes,
        provenance={"checkpoint": EVIL, f"x{EVIL}": "y"},
        notes=[EVIL],
    )
    parsed = _parse(path)
    assert "script" not in parsed.tags
    text = " ".join(parsed.text)
    assert text.count(EVIL) >= 5  # title (x2), class row, provenance key and value, note
    raw = path.read_text(encoding="utf-8")
    assert "<script>" not in raw and "&lt;script&gt;" in raw


def test_report_without_intervals_and_with_absent_class(tmp_path) -> None:
    classes = list(ISIC2018_CLASSES)
    y, p, _ = _inputs(classes, n=80, seed=2)
    y = np.where(y == 5, 0, y)  # DF absent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = compute_classification_metrics(y, p, classes)
    metrics = {k: v for k, v in metrics.items() if k != "ece"}  # the report computes ECE itself
    path = write_evaluation_report(
        tmp_path / "r.html", title="t", metrics=metrics, intervals=None, y_true=y, probs=p, classes=classes,
        provenance={"skinlesion_version": "9.9", "evaluated": "2020-01-01"},
    )
    text = " ".join(_parse(path).text)
    assert "lesion bootstrap" in text and "\u2013" in text  # CI column present but empty
    assert "n/a" in text and "Classes absent from the evaluation set: DF." in text
    from skinlesion.metrics import expected_calibration_error

    assert f"{expected_calibration_error(y, p):.4f}" in text
    assert "package_version" not in text and "2020-01-01" in text  # given aliases are not duplicated


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: {k: v for k, v in m.items() if k != "per_class"}, r"metrics is missing 'per_class'"),
        (lambda m: {**m, "n": 5}, r"metrics were computed on n=5 images but y_true has 30"),
        (lambda m: {**m, "per_class": {}}, r"metrics\['per_class'\] has no entry for classes \['MEL', 'NV'\]"),
    ],
)
def test_report_rejects_mismatched_metrics(tmp_path, change, message) -> None:
    classes = ["MEL", "NV"]
    y, p, _ = _inputs(classes, n=30, seed=3)
    metrics = change(compute_classification_metrics(y, p, classes))
    with pytest.raises(ValueError, match=message):
        write_evaluation_report(
            tmp_path / "r.html", title="t", metrics=metrics, intervals=None, y_true=y, probs=p, classes=classes, provenance={}
        )


def test_plots_return_png_and_validate_input() -> None:
    classes = ["MEL", "NV", "BCC"]
    y, p, _ = _inputs(classes, n=40, seed=4)
    assert confusion_matrix_png(np.eye(3, dtype=int) * 5, classes, normalise=False).startswith(PNG_MAGIC)
    assert reliability_diagram_png(reliability_curve(y, p)).startswith(PNG_MAGIC)
    assert roc_curves_png(y, p, classes).startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match=r"cm must have shape \(3, 3\) for 3 classes; got \(2, 2\)"):
        confusion_matrix_png(np.eye(2), classes)
    with pytest.raises(ValueError, match=r"curve is missing key 'counts'"):
        reliability_diagram_png({"edges": [0, 1], "accuracy": [0.5]})
