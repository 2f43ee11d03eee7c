"""Real sample lesions shipped with the package: 16 HAM10000 images of the test split (CC BY-NC 4.0,
see ``ham10000/README.md``), two or three per class, with their ground truth and metadata.

``make run`` predicts them with the default bundle and prints :func:`summary_table`::

    skinlesion predict "$(python -m skinlesion.samples --csv)" --bundle default --out runs/make-run/predictions --report
    python -m skinlesion.samples runs/make-run/predictions
"""

from __future__ import annotations

import csv
from pathlib import Path

SAMPLES_DIR = Path(__file__).parent / "ham10000"
#: The samples' list: ``path`` (beside it), ``image_id``, ``lesion_id``, ``truth``, ``dx_type``, age, sex, site.
SAMPLES_CSV = SAMPLES_DIR / "samples.csv"
COLUMNS = ("image", "truth", "diagnosis", "p", "flags", "refer", "ood", "review", "report")


def summary_rows(predictions_dir: str | Path) -> list[dict[str, str]]:
    """One row per sample in ``predictions_dir/predictions.csv``: its truth beside the diagnosis,
    the raised class flags, the referral, the out-of-distribution gate, the review flag and the report."""
    out = Path(predictions_dir)
    path = out / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `skinlesion predict {SAMPLES_CSV} --out {out}` first.")
    truth = {r["image_id"]: r["truth"] for r in csv.DictReader(SAMPLES_CSV.open(newline=""))}
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            dx = r.get("diagnosis", "")
            rows.append({
                "image": r["image"],
                "truth": truth.get(r["image"], "?"),
                "diagnosis": dx,
                "p": f"{float(r[dx]):.2f}" if dx in r and r[dx] else "",
                "flags": r.get("flags") or "-",
                "refer": {"True": "refer", "False": "-"}.get(r.get("refer", ""), "n/a"),
                "ood": {"True": "OUT OF DISTRIBUTION", "False": "-"}.get(r.get("out_of_distribution", ""), "n/a"),
                "review": {"True": "REVIEW", "False": "-"}.get(r.get("review_flag", ""), "n/a"),
                "report": r.get("report", ""),
            })
    return rows


def summary_table(predictions_dir: str | Path) -> str:
    """:func:`summary_rows` as a fixed-width text table, with the count of correct diagnoses."""
    rows = summary_rows(predictions_dir)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    right = sum(r["truth"] == r["diagnosis"] for r in rows)
    lines.append(f"{right} of {len(rows)} diagnoses match the ground truth (16 lesions: anecdotes, not a measurement; "
                 "see the model card for test-split metrics). Reports: "
                 f"{Path(predictions_dir) / 'reports'}/")
    return "\n".join(lines)
