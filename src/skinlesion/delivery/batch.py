"""``skinlesion predict``: a streamed, resumable batch run over files, folders and CSV lists of paths.

What is tried, under which ids and with which patient metadata is :mod:`skinlesion.delivery.inputs`;
metadata for a bundle with fusion members on the ONNX engine stops the run before it starts.

Outputs in the out folder (the CSV files: :mod:`skinlesion.delivery.csv_io`):

* ``predictions.csv``: one row per predicted image, a serialisation of its
  :class:`~skinlesion.records.PredictionRecord`.
* ``rejected.csv``: one row per input that is not a usable image, with the reason code of
  :class:`~skinlesion.delivery.images.ImageRejected` (or ``invalid_metadata``, or ``report_failed``
  when its report could not be written: that image only is rejected, and tried again by a re-run).
* ``reports/<name>.html`` with ``report=True`` (see :mod:`skinlesion.delivery.report`; the name is
  :func:`report_name`, unique and bounded), written *before* the image's CSV row, so a row implies
  its report.
* ``run.json``: bundle id, engine, counts, seconds, images/s, audit rows and the options of the last run.
* ``audit-pending.jsonl`` while audit rows wait to be written (:mod:`skinlesion.delivery.audit_journal`).

Images are read and decoded by a torch ``DataLoader`` (``workers`` processes, lists of images of
any size per batch); each image is predicted in its own :meth:`Predictor.predict` call (on a CPU no
slower than a batched call, and its numbers never depend on which images shared its batch: a
resumed run writes the rows an uninterrupted one would, and ``serve`` answers the same file with
the same record), and a batch's rows are appended, flushed and fsynced before the next batch, so
an interrupted run loses nothing it wrote. With an audit log, each row gets exactly one audit row, written after the CSV rows; an audit
failure is logged and retried, never stops the run (:mod:`~skinlesion.delivery.audit_journal`).
A re-run into the same folder skips every path already in ``predictions.csv`` (the key is
the resolved path), drops a torn last line, tries rejected inputs again (they may have been
fixed), and refuses a folder written by another bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset

import skinlesion
from skinlesion.delivery.csv_io import PREDICTIONS_CSV, OutFiles, fsync, prediction_columns, prediction_row, read_rows
from skinlesion.delivery.audit_journal import AuditJournal, batch_request_id
from skinlesion.delivery.images import ImageLimits, ImageRejected, load_image, read_image_bytes
from skinlesion.delivery.inputs import (
    REPORT_FAILED,
    BatchError,
    InputFile,
    Rejection,
    attach_metadata,
    check_metadata,
    discover_inputs,
    image_ids,
)
from skinlesion.delivery.metadata import read_metadata_csv
from skinlesion.delivery import report as html_report
from skinlesion.records import PredictionRecord

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import Predictor

log = logging.getLogger(__name__)
RUN_JSON = "run.json"
REPORTS_DIR = "reports"
#: Longest report file stem kept from an image id (file systems allow 255 bytes per name).
REPORT_STEM_MAX = 100
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,%d}" % REPORT_STEM_MAX)


# -- reading (DataLoader workers) ---------------------------------------------------------------------
class _InputDataset(Dataset):
    """Items ``{index, path, sha256, image, converted_from}`` or ``{index, path, sha256, reason, detail}``."""

    def __init__(self, files: Sequence[InputFile], limits: ImageLimits) -> None:
        self.files = list(files)
        self.limits = limits

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        f = self.files[index]
        item: dict[str, Any] = {"index": index, "path": str(f.path), "sha256": "", "image": None, "metadata": f.metadata}
        try:
            data = read_image_bytes(f.path, limits=self.limits)
            item["sha256"] = hashlib.sha256(data).hexdigest()
            decoded = load_image(data, source=str(f.path), limits=self.limits)
            item["image"], item["converted_from"] = decoded.array, decoded.converted_from
        except ImageRejected as e:
            item.update(reason=e.reason, detail=e.detail + (f" (listed in {f.origin})" if f.origin else ""))
        return item


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list: images differ in size and rejected items carry no image."""
    return batch


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    """What a run did (written to ``run.json``)."""

    out: str
    bundle_id: str
    bundle_name: str | None
    engine: str
    classes: list[str]
    status: str = "running"
    inputs: int = 0
    done: int = 0
    skipped: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: int = 0
    metadata_unmatched: list[str] = field(default_factory=list)
    audit_rows: int = 0
    audit_pending: int = 0
    seconds: float = 0.0
    images_per_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    started_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"] = {"inputs": self.inputs, "done": self.done, "skipped_already_done": self.skipped,
                       "rejected": len(self.rejected), "duplicates_ignored": self.duplicates}
        for k in ("inputs", "done", "skipped", "duplicates"):
            d.pop(k)
        d["skinlesion_version"] = skinlesion.__version__
        return d


def _write_run_json(out: Path, summary: RunSummary) -> None:
    tmp = out / (RUN_JSON + ".tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    os.replace(tmp, out / RUN_JSON)


def _check_bundle(out: Path, bundle_id: str, rows: Sequence[Mapping[str, str]] = ()) -> None:
    """Refuse to resume into ``out`` when its run.json or rows name another bundle."""
    ids: set[str] = {r["bundle_id"] for r in rows}
    try:
        previous = json.loads((out / RUN_JSON).read_text()).get("bundle_id")
        if previous:
            ids.add(str(previous))
    except (OSError, ValueError, AttributeError):
        pass
    other = sorted(ids - {bundle_id})
    if other:
        raise BatchError(
            f"{out} holds predictions of bundle {', '.join(other)}, not of this bundle {bundle_id}: "
            "a resumed run must use the same bundle; choose a new --out"
        )


def report_name(image_id: str) -> str:
    """The report file of an image: ``<id>.html`` when the id is a short name of letters, digits and
    ``._-``; otherwise those characters of the id (others as ``_``, at most :data:`REPORT_STEM_MAX`)
    and ``~`` plus 12 hex digits of the id's sha256. Distinct ids never share a name: a plain name
    has no ``~``, and a hashed one names its id's hash."""
    if _PLAIN_NAME.fullmatch(image_id):
        return image_id + ".html"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)[:REPORT_STEM_MAX]
    digest = hashlib.sha256(image_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem}~{digest}.html"


def _write_report(path: Path, html: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", errors="backslashreplace") as f:
        f.write(html)
        fsync(f)
    os.replace(tmp, path)


def run_predictions(
    predictor: Predictor,
    paths: Iterable[str | Path],
    out: str | Path,
    *,
    report: bool = False,
    batch_size: int = 16,
    workers: int = 0,
    pixel_spacing_mm: float | None = None,
    limits: ImageLimits | None = None,
    audit: AuditLog | None = None,
    options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    metadata: str | Path | None = None,
) -> RunSummary:
    """Predict every input into ``out`` (see the module docstring); resumes what is there.

    ``progress(processed, total)`` is called before the first batch and after each one.
    ``metadata``: a table of patient metadata per image (see :func:`attach_metadata`).
    Raises :class:`BatchError` when ``out`` was written by another bundle, a CSV list is malformed
    or metadata is given to an engine that cannot use it; :class:`MetadataFileError` for a bad table.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"The 'batch_size' parameter must be a positive integer. Got {batch_size!r} instead.")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"The 'workers' parameter must be an integer >= 0. Got {workers!r} instead.")
    limits = limits or ImageLimits()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = predictor.bundle
    classes = list(bundle.classes)
    columns = prediction_columns(classes)

    _check_bundle(out, bundle.bundle_id)
    done_rows = read_rows(out / PREDICTIONS_CSV, columns, repair=False)
    _check_bundle(out, bundle.bundle_id, done_rows)
    read_rows(out / PREDICTIONS_CSV, columns)  # now drop a torn last line
    table = read_metadata_csv(metadata) if metadata is not None else []
    inputs = discover_inputs(paths, exclude=[out])
    done = {r["path"]: r["image"] for r in done_rows}
    ids = image_ids([f.path for f in inputs.files], taken={v: k for k, v in done.items()})
    unmatched = attach_metadata(inputs, table, ids)
    check_metadata(inputs)
    if not predictor.accepts_metadata and any(f.metadata is not None for f in inputs.files):
        raise BatchError(
            f"the {predictor.engine_name} engine runs image-only graphs, but this bundle's members use patient "
            "metadata and the inputs give some: use --engine torch, or leave the metadata out"
        )
    todo = [f for f in inputs.files if str(f.path) not in done]
    summary = RunSummary(
        out=str(out), bundle_id=bundle.bundle_id, bundle_name=bundle.spec.name, engine=predictor.engine_name,
        classes=classes, inputs=len(inputs.files) + len(inputs.rejected), skipped=len(inputs.files) - len(todo),
        duplicates=inputs.duplicates, options=dict(options or {}), metadata_unmatched=unmatched,
    )
    if report:
        (out / REPORTS_DIR).mkdir(exist_ok=True)
    _write_run_json(out, summary)
    outputs = OutFiles(out, columns)
    journal = AuditJournal(audit, out) if audit is not None else None
    t0 = time.perf_counter()
    try:
        with outputs:
            if journal is not None:
                journal.recover(set(done))
            outputs.reject(inputs.rejected)
            summary.rejected.extend(inputs.rejected)
            if progress:
                progress(0, len(todo))
            loader = DataLoader(
                _InputDataset(todo, limits), batch_size=batch_size, shuffle=False, num_workers=workers if todo else 0,
                collate_fn=collate_items,
            )
            for batch in loader:
                bad = [Rejection(it["path"], it["reason"], it["detail"], it["sha256"]) for it in batch if it["image"] is None]
                outputs.reject(bad)
                summary.rejected.extend(bad)
                good = [it for it in batch if it["image"] is not None]
                rows, entries, failed = [], [], []
                for it in good:  # one image per model call: a result never depends on its batch (see the module doc)
                    tb, one = time.perf_counter(), [it["image"]]
                    rec = (predictor.predict(one) if it["metadata"] is None else predictor.predict(one, metadata=[it["metadata"]]))[0]
                    elapsed = 1000.0 * (time.perf_counter() - tb)
                    rec["converted_from"] = it["converted_from"]
                    image_id = ids[Path(it["path"])]
                    rel = ""
                    if report:  # the report first: a row implies its report
                        rel = f"{REPORTS_DIR}/{report_name(image_id)}"
                        try:
                            _write_report(out / rel, _render(predictor, it, rec, image_id, pixel_spacing_mm))
                        except Exception as e:  # noqa: BLE001 - one image's report must not stop the run
                            log.warning("%s: report %s not written", it["path"], rel, exc_info=True)
                            failed.append(Rejection(it["path"], REPORT_FAILED, f"its report {rel} could not be written ({type(e).__name__}: {e})", it["sha256"]))
                            continue
                    rows.append(prediction_row(image_id, it["path"], it["sha256"], rec, classes, rel))
                    entries.append({
                        "source": "predict", "input_sha256": it["sha256"], "input_name": it["path"], "record": rec,
                        "elapsed_ms": elapsed, "request_id": batch_request_id(out, it["path"], it["sha256"], bundle.bundle_id),
                    })
                outputs.reject(failed)
                summary.rejected.extend(failed)
                if journal is not None:
                    journal.stage(entries)  # staged before the rows: a row never lacks its audit row
                outputs.append(rows)
                if journal is not None:
                    journal.flush()
                done.update((r["path"], r["image"]) for r in rows)
                summary.done += len(rows)
                if progress:
                    progress(summary.done + len(summary.rejected) - len(inputs.rejected), len(todo))
        summary.status = "complete"
    except BaseException:
        summary.status = "interrupted"
        raise
    finally:
        outputs.tidy(set(done))
        if journal is not None:
            journal.flush()
            summary.audit_rows, summary.audit_pending = journal.written, len(journal.pending)
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.images_per_s = round(summary.done / summary.seconds, 3) if summary.seconds > 0 and summary.done else None
        _write_run_json(out, summary)
    return summary


def _render(predictor: Predictor, item: Mapping[str, Any], record: PredictionRecord, image_id: str, spacing: float | None) -> str:
    result, arrays = predictor.explain(item["image"], pixel_spacing_mm=spacing, record=record, metadata=item.get("metadata"))
    result["input"] = {"image": image_id, "path": item["path"], "sha256": item["sha256"], "shape": list(item["image"].shape)}
    result["converted_from"] = record.get("converted_from")
    return html_report.render_report(result, item["image"], arrays, title=image_id)
