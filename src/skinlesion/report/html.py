"""A self-contained HTML evaluation report: one file, inline CSS, PNGs embedded as base64.

Every string that comes from the caller (title, class names, provenance, notes) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion.metrics.calibration import expected_calibration_error, reliability_curve
from skinlesion.metrics.inputs import check_inputs
from skinlesion.report.plots import (
    confusion_matrix_png,
    reliability_diagram_png,
    roc_curves_png,
)

HEADLINE: tuple[tuple[str, str], ...] = (
    ("bacc", "Balanced accuracy (BACC)"),
    ("malignant_bacc", "Malignant BACC (mean sensitivity of MEL, BCC, AKIEC, SCC)"),
    ("accuracy", "Accuracy"),
    ("f1_macro", "F1 (macro)"),
    ("f1_weighted", "F1 (weighted)"),
    ("auc_macro", "AUC (macro, one-vs-rest)"),
    ("ece", "ECE (top-label, 15 bins; lower is better)"),
)
PER_CLASS: tuple[tuple[str, str], ...] = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("auc", "AUC"),
    ("ap", "AP"),
)
PROVENANCE_KEYS: tuple[str, ...] = ("checkpoint", "backbone", "split_hash", "dataset", "package_version", "date")

_VERSION_ALIASES = frozenset({"package_version", "skinlesion_version", "version"})
_DATE_ALIASES = frozenset({"date", "evaluated", "created", "timestamp"})

DISCLAIMER = (
    "This report comes from a research tool for clinical decision support. It is not a diagnosis "
    "and not a medical device; every decision about a patient rests with a qualified clinician."
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}
.notice{border:2px solid #b45309;background:#fff7ed;padding:.8em 1em;border-radius:4px}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs img{max-width:100%;height:auto;border:1px solid #eee}
.muted{color:#666;font-size:.9em}
"""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    v = float(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}f}"


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def _interval(iv: Mapping[str, Any] | None) -> str:
    if not iv:
        return "&ndash;"
    low, high = _num(iv.get("low")), _num(iv.get("high"))
    if low == "n/a" or high == "n/a":
        return "n/a"
    text = f"{low} &ndash; {high}"
    n_boot, n_valid = iv.get("n_boot"), iv.get("n_boot_valid")
    if n_boot is not None and n_valid is not None and n_valid < n_boot:
        text += f' <span class="muted">({int(n_valid)}/{int(n_boot)} resamples defined)</span>'
    return text


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _check_metrics(metrics: Mapping[str, Any], classes: list[str], n: int) -> None:
    for key in ("per_class", "confusion_matrix", "n"):
        if key not in metrics:
            raise ValueError(f"metrics is missing {key!r}; pass the dict from compute_classification_metrics().")
    missing = [c for c in classes if c not in metrics["per_class"]]
    if missing:
        raise ValueError(f"metrics['per_class'] has no entry for classes {missing}; expected one per class in {classes}.")
    if int(metrics["n"]) != n:
        raise ValueError(f"metrics were computed on n={metrics['n']} images but y_true has {n}; pass matching inputs.")


def write_evaluation_report(
    out_path: Any,
    *,
    title: str,
    metrics: Mapping[str, Any],
    intervals: Mapping[str, Mapping[str, Any]] | None,
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    provenance: Mapping[str, Any],
    notes: Sequence[str] = (),
    extra_tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = (),
) -> Path:
    """Write a single self-contained HTML evaluation report.

    Args:
        out_path: the ``.html`` file to write (parents are created).
        title: report title (escaped).
        metrics: the dict from :func:`~skinlesion.metrics.compute_classification_metrics`.
        intervals: the dict from :func:`~skinlesion.metrics.bootstrap_ci` (keys as in
            :func:`~skinlesion.metrics.standard_metric_fns`), or ``None`` for no intervals.
        y_true: true class indices, shape ``(n,)``.
        probs: class probabilities, shape ``(n, K)``.
        classes: the K class names.
        provenance: checkpoint, backbone, split_hash, dataset, ... (``package_version`` and
            ``date`` are filled in unless given, also as ``skinlesion_version``/``evaluated``).
        notes: free-text remarks shown under the title (escaped).
        extra_tables: ``(heading, header, rows)`` tables shown after the headline metrics (escaped),
            e.g. argmax vs calibrated decisions of a bundle.
    """
    import skinlesion

    classes = [str(c) for c in classes]
    y, p = check_inputs(y_true, probs, classes)
    _check_metrics(metrics, classes, y.shape[0])
    intervals = intervals or {}
    headline_values = dict(metrics)
    if headline_values.get("ece") is None:
        headline_values["ece"] = expected_calibration_error(y, p)

    level = next((f"{100 * (1 - float(iv['alpha'])):g}%" for iv in intervals.values() if "alpha" in iv), "95%")
    n_boot = next((int(iv["n_boot"]) for iv in intervals.values() if "n_boot" in iv), None)
    ci_head = f"{level} CI (lesion bootstrap)"
    headline = _table(
        ["Metric", "Value", ci_head],
        [[escape(label), _num(headline_values.get(key)), _interval(intervals.get(key))] for key, label in HEADLINE],
    )
    rows = []
    for c in classes:
        pc = metrics["per_class"][c]
        cells = [escape(c)]
        for key, _ in PER_CLASS:
            cell = _num(pc.get(key))
            iv = intervals.get(f"{key}_{c}")
            if iv and _interval(iv) not in ("n/a", "&ndash;"):
                cell += f' <span class="muted">[{_num(iv.get("low"))}, {_num(iv.get("high"))}]</span>'
            cells.append(cell)
        cells.append(_num(pc.get("support")))
        rows.append(cells)
    per_class = _table(["Class", *(label for _, label in PER_CLASS), "Support"], rows)

    figures = "".join(
        [
            _img(confusion_matrix_png(metrics["confusion_matrix"], classes), "Confusion matrix"),
            _img(reliability_diagram_png(reliability_curve(y, p)), "Reliability diagram"),
            _img(roc_curves_png(y, p, classes), "ROC curves"),
        ]
    )

    prov = dict(provenance)
    if not _VERSION_ALIASES & set(prov):
        prov["package_version"] = f"skinlesion {skinlesion.__version__}"
    if not _DATE_ALIASES & set(prov):
        prov["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    ordered = [k for k in PROVENANCE_KEYS if k in prov] + [k for k in prov if k not in PROVENANCE_KEYS]
    provenance_table = _table(["Field", "Value"], [[escape(str(k)), escape(_text(prov[k]))] for k in ordered])

    absent = metrics.get("absent_classes") or []
    definitions = [
        "BACC is the mean per-class sensitivity over the classes present in the evaluation set "
        "(as in the ISIC challenge); predictions are the class of highest probability.",
        "Per-class values are one-vs-rest; PPV and NPV depend on the prevalence of this data set.",
        "n/a marks a value that is undefined here (e.g. a class with no image in the evaluation set).",
    ]
    if intervals:
        definitions.append(
            f"Intervals are {level} percentile intervals from a cluster bootstrap that resamples lesions "
            f"(all images of a lesion together){f', {n_boot} resamples' if n_boot else ''}."
        )
    if absent:
        definitions.append(f"Classes absent from the evaluation set: {', '.join(map(str, absent))}.")

    body = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="notice"><strong>Not a diagnosis.</strong> {escape(DISCLAIMER)}</p>
<p>{int(y.shape[0])} images, {len(classes)} classes.</p>
{"".join(f"<p>{escape(str(n))}</p>" for n in notes)}
<h2>Headline metrics</h2>
{headline}
{"".join(f"<h2>{escape(h)}</h2>" + _table([escape(str(c)) for c in head], [[escape(_text(v)) for v in r] for r in rows]) for h, head, rows in extra_tables)}
<h2>Per-class metrics</h2>
{per_class}
<h2>Figures</h2>
<div class="figs">{figures}</div>
<h2>Definitions</h2>
<ul>{"".join(f"<li>{escape(d)}</li>" for d in definitions)}</ul>
<h2>Provenance</h2>
{provenance_table}
</body>
</html>
"""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out
