"""The CSV files of a ``skinlesion predict`` run, written so that a crash loses nothing written.

* ``predictions.csv``: the ISIC submission columns (``image``, then one probability column per
  class in the bundle's order) followed by :data:`DETAIL_COLUMNS`: the record's columns
  (:data:`skinlesion.records.COLUMNS`: decision, the rule that made it, the operating point whose
  temperature and thresholds were used, review flag, MC-dropout uncertainty in nats, the metadata
  used (empty: missing)), then provenance (input path and sha256, what the file was converted from
  (empty: it was upright 8-bit RGB; :func:`~skinlesion.delivery.images.conversion_text`), bundle id,
  engine, report).
  A row is a serialisation of one :class:`~skinlesion.records.PredictionRecord`
  (:func:`prediction_row`).
* ``rejected.csv``: :data:`~skinlesion.delivery.inputs.REJECTED_COLUMNS`, one current row per
  input that could not be predicted.

Cells that a spreadsheet would run as a formula are escaped (:mod:`skinlesion._csv`) and restored
when read back. :class:`OutFiles` appends rows and flushes and fsyncs them per call; :func:`read_rows`
reads a file back, drops a torn last line (no final newline, or too few fields) and, with ``repair``,
rewrites the file without it; a header other than this run's is a
:class:`~skinlesion.delivery.inputs.BatchError` ("choose a new --out").
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from skinlesion import _csv
from skinlesion.delivery.images import conversion_text
from skinlesion.delivery.inputs import REJECTED_COLUMNS, BatchError, Rejection
from skinlesion.records import COLUMNS, PredictionRecord, record_columns

PREDICTIONS_CSV = "predictions.csv"
REJECTED_CSV = "rejected.csv"
#: predictions.csv columns after ``image`` and the class probabilities.
DETAIL_COLUMNS = (*COLUMNS, "path", "input_sha256", "converted_from", "bundle_id", "engine", "report")


def prediction_columns(classes: Sequence[str]) -> list[str]:
    """``image``, the classes in bundle order, then :data:`DETAIL_COLUMNS`."""
    return ["image", *classes, *DETAIL_COLUMNS]


def fsync(f: Any) -> None:
    """Flush an open file to disk."""
    f.flush()
    os.fsync(f.fileno())


def _rewrite(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = _csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        fsync(f)
    os.replace(tmp, path)


def read_rows(path: Path, columns: Sequence[str], *, repair: bool = True) -> list[dict[str, str]]:
    """Rows of a CSV this module wrote (cells restored by :func:`skinlesion._csv.read_cell`). A torn
    last row (no final newline, also one cut inside a multi-byte character, or too few fields) is
    dropped, and with ``repair`` the file is rewritten without it; a header other than ``columns``
    or damage before the last line is a :class:`BatchError`."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    torn = complete != data
    text = complete.decode("utf-8", "surrogateescape")  # file names that are not UTF-8 come back as they were
    records = _csv.read_rows(csv.reader(io.StringIO(text, newline="")))
    if not records:  # empty, or the header itself was torn
        if repair:
            _rewrite(path, columns, [])
        return []
    if records[0] != list(columns):
        raise BatchError(
            f"{path} has columns {records[0]}, not the {list(columns)} of this run (another bundle or "
            "version wrote it); choose a new --out"
        )
    body = records[1:]
    if body and len(body[-1]) != len(columns):
        body, torn = body[:-1], True
    for i, r in enumerate(body):
        if len(r) != len(columns):
            raise BatchError(f"{path} row {i + 2} has {len(r)} fields, expected {len(columns)}; the file was edited or damaged")
    rows = [dict(zip(columns, r, strict=True)) for r in body]
    if torn and repair:
        _rewrite(path, columns, rows)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return format(v, ".9g")
    return str(v)


def prediction_row(
    image_id: str, path: str, sha256: str, record: PredictionRecord, classes: Sequence[str], report: str = ""
) -> dict[str, str]:
    """One ``predictions.csv`` row: the record's probabilities and columns, and where the input came from."""
    values = {
        **record_columns(record), "path": path, "input_sha256": sha256, "report": report,
        "converted_from": conversion_text(record.get("converted_from")),
    }
    probabilities = record["prediction"]["probabilities"]
    return {"image": image_id, **{c: _fmt(float(probabilities[c])) for c in classes}, **{c: _fmt(values[c]) for c in DETAIL_COLUMNS}}


class OutFiles:
    """The out folder's CSV files while a run appends to them (flushed and fsynced per call).

    ``rejected.csv`` keeps one current row per input: a rejection already listed is not appended
    again, and :meth:`tidy` drops rows of inputs predicted since, or rejected this time for
    another reason.
    """

    def __init__(self, out: Path, columns: Sequence[str]) -> None:
        self.pred_path, self.rej_path, self.columns = out / PREDICTIONS_CSV, out / REJECTED_CSV, list(columns)
        self.listed = {_key(r) for r in read_rows(self.rej_path, REJECTED_COLUMNS)}
        self.tried: set[str] = set()
        self.current: set[tuple[str, str, str]] = set()

    def __enter__(self) -> OutFiles:
        self.pf = self.pred_path.open("a", newline="", encoding="utf-8", errors="surrogateescape")
        self.rf = self.rej_path.open("a", newline="", encoding="utf-8", errors="surrogateescape")
        self.pw = _csv.DictWriter(self.pf, fieldnames=self.columns, lineterminator="\n")
        self.rw = _csv.DictWriter(self.rf, fieldnames=list(REJECTED_COLUMNS), lineterminator="\n")
        for f, w in ((self.pf, self.pw), (self.rf, self.rw)):
            if f.tell() == 0:
                w.writeheader()
                fsync(f)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pf.close()
        self.rf.close()

    def reject(self, rejections: Sequence[Rejection]) -> None:
        new = []
        for r in rejections:
            self.tried.add(r.path)
            self.current.add(_key(asdict(r)))
            if _key(asdict(r)) not in self.listed:
                new.append(asdict(r))
        if new:
            self.rw.writerows(new)
            fsync(self.rf)

    def append(self, rows: Sequence[Mapping[str, str]]) -> None:
        self.tried.update(r["path"] for r in rows)
        self.pw.writerows(rows)
        fsync(self.pf)

    def tidy(self, done: set[str]) -> None:
        rows = read_rows(self.rej_path, REJECTED_COLUMNS)
        keep, seen = [], set()
        for r in rows:
            k = _key(r)
            if r["path"] in done or (r["path"] in self.tried and k not in self.current) or k in seen:
                continue
            seen.add(k)
            keep.append(r)
        if len(keep) != len(rows):
            _rewrite(self.rej_path, REJECTED_COLUMNS, keep)


def _key(row: Mapping[str, str]) -> tuple[str, str, str]:
    return row["path"], row["reason"], row["detail"]
