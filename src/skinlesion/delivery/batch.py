"""``skinlesion predict``: a streamed, resumable batch run over files, folders and CSV lists of paths.

Inputs (:func:`discover_inputs`): image files given on the command line are always tried; folders
are walked recursively and files with an image extension (:data:`IMAGE_EXTENSIONS`, any case)
are tried, every other file found there is *listed* as rejected (``not_an_image``), never dropped
silently; a ``.csv`` file is a list of paths (column ``path`` or ``image_path``; relative paths
are resolved against the CSV's folder, problems name the CSV line). The same file given twice is
predicted once.

Patient metadata (optional; see :mod:`skinlesion.delivery.metadata`): a CSV list of paths may carry
``age``, ``sex`` and ``site`` columns, and ``metadata=FILE.csv`` (``--metadata``) gives them by
``image`` (file stem or predictions.csv id) or ``path``, replacing a list's values for the columns
it has. A row that matches no input is reported (``metadata_unmatched`` in run.json). An invalid
value rejects that image (reason ``invalid_metadata``); metadata for a bundle with fusion members
on the ONNX engine stops the run before it starts.

Outputs in the out folder:

* ``predictions.csv``: the ISIC submission columns (``image``, then one probability column per
  class in the bundle's order) followed by :data:`DETAIL_COLUMNS` (decision, the rule that made it,
  the operating point whose temperature and thresholds were used (``with_metadata``, or
  ``without_metadata`` for an image given without metadata to a bundle fitted for that case),
  review flag, MC-dropout uncertainty in nats, the metadata used (empty: missing), provenance).
* ``rejected.csv``: :data:`REJECTED_COLUMNS`, one row per input that is not a usable 8-bit RGB
  image, with the reason code of :class:`~skinlesion.delivery.images.ImageRejected`.
* ``reports/<image>.html`` with ``report=True`` (see :mod:`skinlesion.delivery.report`), written
  *before* the image's CSV row, so a row implies its report.
* ``run.json``: bundle id, engine, counts, seconds, images/s and the options of the last run.

Images are read and decoded by a torch ``DataLoader`` (``workers`` processes, lists of images of
any size per batch); every batch is predicted in one :meth:`Predictor.predict` call and its rows
are appended, flushed and fsynced before the next one, so an interrupted run loses nothing it
wrote. A re-run into the same folder skips every path already in ``predictions.csv`` (the key is
the resolved path), drops a torn last line, tries rejected inputs again (they may have been
fixed), and refuses a folder written by another bundle.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, Dataset

import skinlesion
from skinlesion.delivery.images import ImageLimits, ImageRejected, decode_image, read_image_bytes
from skinlesion.delivery.metadata import (
    FIELDS,
    MetadataError,
    MetadataFileError,
    MetadataRow,
    normalise_metadata,
    read_metadata_csv,
)
from skinlesion.errors import SkinLesionError

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import Predictor

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
PATH_COLUMNS = ("path", "image_path")
PREDICTIONS_CSV = "predictions.csv"
REJECTED_CSV = "rejected.csv"
RUN_JSON = "run.json"
REPORTS_DIR = "reports"
#: predictions.csv columns after ``image`` and the class probabilities.
DETAIL_COLUMNS = (
    "decision", "decided_by", "threshold_fired", "operating_point", "argmax", "review_flag", "review_score_name", "review_value",
    "predictive_entropy", "aleatoric_expected_entropy", "epistemic_mutual_information", "max_probability",
    *FIELDS, "path", "input_sha256", "bundle_id", "engine", "report",
)
#: rejected.csv reason of an image whose metadata is invalid (not an image check: not in images.REASONS).
INVALID_METADATA = "invalid_metadata"
REJECTED_COLUMNS = ("path", "reason", "detail", "input_sha256")
_UNCERTAINTY_COLUMNS = ("predictive_entropy", "aleatoric_expected_entropy", "epistemic_mutual_information", "max_probability")


class BatchError(SkinLesionError):
    """A batch run cannot start: a malformed list of paths or an out folder it must not write into."""


@dataclass(frozen=True)
class InputFile:
    """One file to try: its resolved path, for CSV lists where it was listed, and its metadata
    (raw values as listed until :func:`run_predictions` normalises them; None: none given)."""

    path: Path
    origin: str | None = None
    metadata: Mapping[str, Any] | None = None
    metadata_origin: str | None = None  # where the metadata came from, when not from ``origin``


@dataclass(frozen=True)
class Rejection:
    """A row of ``rejected.csv``."""

    path: str
    reason: str
    detail: str
    input_sha256: str = ""


@dataclass
class Inputs:
    files: list[InputFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)  # found in folders without an image extension
    duplicates: int = 0


def prediction_columns(classes: Sequence[str]) -> list[str]:
    """``image``, the classes in bundle order, then :data:`DETAIL_COLUMNS`."""
    return ["image", *classes, *DETAIL_COLUMNS]


# -- input discovery -------------------------------------------------------------------------------
def _csv_entries(csv_path: Path) -> list[InputFile]:
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"Cannot read the list of paths {csv_path} ({e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    column = next((c for c in PATH_COLUMNS if c in header), None)
    if column is None:
        raise BatchError(
            f"The list of paths {csv_path} must have a column named {' or '.join(PATH_COLUMNS)}. "
            f"Got columns {header} instead."
        )
    fields = [f for f in FIELDS if f in header]
    out = []
    for row in reader:
        value = (row.get(column) or "").strip()
        if not value:
            raise BatchError(f"{csv_path} line {reader.line_num}: the {column!r} cell is empty; give a path or remove the row")
        p = Path(value).expanduser()
        metadata = {f: (row.get(f) or "").strip() for f in fields} or None
        out.append(InputFile(
            (p if p.is_absolute() else csv_path.parent / p).resolve(), f"{csv_path.name} line {reader.line_num}", metadata,
        ))
    return out


def _walk(folder: Path, exclude: Sequence[Path]) -> Iterable[Path]:
    for root, dirs, names in os.walk(folder):
        r = Path(root)
        dirs[:] = sorted(d for d in dirs if (r / d).resolve() not in exclude)
        for name in sorted(names):
            yield r / name


def discover_inputs(paths: Iterable[str | Path], *, exclude: Sequence[str | Path] = ()) -> Inputs:
    """Expand files, folders (recursively) and CSV lists of paths into the files to try.

    ``exclude``: folders not to walk into (the run's out folder). Raises :class:`BatchError` for
    a CSV list without a path column or with an empty path cell.
    """
    skip = [Path(p).resolve() for p in exclude]
    found = Inputs()
    seen: set[Path] = set()
    listed: set[Path] = set()  # rejected for their extension

    def add(f: InputFile) -> None:
        if f.path in seen:
            found.duplicates += 1
            return
        seen.add(f.path)
        found.files.append(f)

    for given in paths:
        p = Path(given).expanduser()
        if p.resolve() in listed:  # given explicitly after a folder listed it: try it after all
            listed.discard(p.resolve())
            found.rejected = [r for r in found.rejected if r.path != str(p.resolve())]
        if p.is_dir():
            for f in _walk(p, skip):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    add(InputFile(f.resolve()))
                elif f.resolve() not in seen and f.resolve() not in listed:
                    listed.add(f.resolve())
                    ext = f.suffix or "(none)"
                    found.rejected.append(Rejection(
                        str(f.resolve()), "not_an_image",
                        f"found in folder {p}; its extension {ext} is not an image extension "
                        f"({' '.join(sorted(IMAGE_EXTENSIONS))})",
                    ))
        elif p.suffix.lower() == ".csv" and p.is_file():
            for f in _csv_entries(p.resolve()):
                add(f)
        else:
            add(InputFile(p.resolve()))  # tried even when missing: read_image gives the reason
    return found


def image_ids(paths: Sequence[Path], taken: Mapping[str, str] | None = None) -> dict[Path, str]:
    """A unique ``image`` id per path: the file stem, or, when stems clash, the path relative to the
    inputs' common folder without its extension and with ``__`` for separators.

    ``taken``: ``{id: path}`` already written (a resumed run); those paths keep their ids and no
    other path gets them.
    """
    taken = dict(taken or {})
    used = set(taken)
    out: dict[Path, str] = {}
    owned = {v: k for k, v in taken.items()}
    for p in paths:
        if str(p) in owned:
            out[p] = owned[str(p)]
    if not paths:
        return out
    stems = Counter(p.stem for p in paths)
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    for p in paths:
        if p in out:
            continue
        rel = p.relative_to(root)
        candidates = ([p.stem] if stems[p.stem] == 1 else []) + [
            "__".join(rel.with_suffix("").parts), "__".join(rel.parts),
        ]
        chosen = next((c for c in candidates if c not in used), None)
        k = 2
        while chosen is None:
            chosen = f"{candidates[-1]}~{k}" if f"{candidates[-1]}~{k}" not in used else None
            k += 1
        used.add(chosen)
        out[p] = chosen
    return out


# -- metadata ----------------------------------------------------------------------------------------
def attach_metadata(inputs: Inputs, rows: Sequence[MetadataRow], ids: Mapping[Path, str]) -> list[str]:
    """Give each input its ``--metadata`` row (by resolved ``path``, or by ``image``: the input's id
    in predictions.csv or its file stem); the row's columns replace a list's values. Returns the
    rows that match no input (``"<file> line N: image 'x'"``). An ``image`` that names several
    inputs (same stem in different folders) is a :class:`MetadataFileError`."""
    by_path = {str(f.path): i for i, f in enumerate(inputs.files)}
    by_image: dict[str, set[int]] = {}
    for i, f in enumerate(inputs.files):
        for name in {ids.get(f.path, f.path.stem), f.path.stem}:
            by_image.setdefault(name, set()).add(i)
    unmatched: list[str] = []
    for row in rows:
        if row.column == "path":
            hits = {by_path[row.key]} if row.key in by_path else set()
        else:
            hits = by_image.get(row.key, set())
        if len(hits) > 1:
            names = sorted(str(inputs.files[i].path) for i in hits)
            raise MetadataFileError(
                f"{row.where}: image {row.key!r} matches {len(hits)} inputs ({', '.join(names)}); "
                "use a 'path' column or the ids of predictions.csv"
            )
        if not hits:
            unmatched.append(f"{row.where}: {row.column} {row.key!r}")
            continue
        i = hits.pop()
        f = inputs.files[i]
        where = row.where if f.metadata is None else f"{f.origin} and {row.where}"
        inputs.files[i] = InputFile(f.path, f.origin, {**(f.metadata or {}), **row.values}, where)
    return unmatched


def _check_metadata(inputs: Inputs) -> None:
    """Normalise every input's metadata in place; an invalid value moves the input to the rejected."""
    keep: list[InputFile] = []
    for f in inputs.files:
        if f.metadata is None:
            keep.append(f)
            continue
        where = f.metadata_origin or f.origin or "the list"
        try:
            keep.append(InputFile(f.path, f.origin, normalise_metadata(f.metadata, where)))
        except MetadataError as e:
            inputs.rejected.append(Rejection(str(f.path), INVALID_METADATA, str(e)))
    inputs.files = keep


# -- reading (DataLoader workers) ---------------------------------------------------------------------
class _InputDataset(Dataset):
    """Items ``{index, path, sha256, image}`` or ``{index, path, sha256, reason, detail}``."""

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
            item["image"] = decode_image(data, source=str(f.path), limits=self.limits)
        except ImageRejected as e:
            item.update(reason=e.reason, detail=e.detail + (f" (listed in {f.origin})" if f.origin else ""))
        return item


def collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list: images differ in size and rejected items carry no image."""
    return batch


# -- CSV files: append with fsync, read back tolerating a torn last line --------------------------------
def _fsync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def _rewrite(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        _fsync(f)
    os.replace(tmp, path)


def read_rows(path: Path, columns: Sequence[str], *, repair: bool = True) -> list[dict[str, str]]:
    """Rows of a CSV this module wrote. A torn last row (no final newline, or too few fields) is
    dropped, and with ``repair`` the file is rewritten without it; a header other than ``columns``
    is a :class:`BatchError`."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    records = list(csv.reader(io.StringIO(complete, newline="")))
    torn = complete != text
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
    image_id: str, path: str, sha256: str, record: Mapping[str, Any], classes: Sequence[str], report: str = ""
) -> dict[str, str]:
    """One ``predictions.csv`` row from a :class:`Predictor` record."""
    p = record["prediction"]
    u = record.get("uncertainty") or {}
    review = u.get("review") or {}
    used = (record.get("metadata") or {}).get("used") or {}
    row = {"image": image_id, **{c: _fmt(float(p["probabilities"][c])) for c in classes}}
    row.update(
        decision=p["decision"], decided_by=p["decided_by"], threshold_fired=_fmt(p.get("threshold_fired")),
        operating_point=_fmt(p.get("operating_point_name")), argmax=p["argmax"], review_flag=_fmt(review.get("flag")), review_score_name=_fmt(review.get("score")),
        review_value=_fmt(review.get("value")),
        **{k: _fmt(u.get(k)) for k in _UNCERTAINTY_COLUMNS},
        **{f: _fmt(used.get(f)) for f in FIELDS},
        path=path, input_sha256=sha256, bundle_id=record["bundle"]["id"], engine=record["bundle"]["engine"], report=report,
    )
    return row


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


def _report_name(image_id: str) -> str:
    return "".join("_" if ch in "/\\\0" else ch for ch in image_id) + ".html"


def _write_report(path: Path, html: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(html)
        _fsync(f)
    os.replace(tmp, path)


class _Outputs:
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

    def __enter__(self) -> _Outputs:
        self.pf = self.pred_path.open("a", newline="", encoding="utf-8")
        self.rf = self.rej_path.open("a", newline="", encoding="utf-8")
        self.pw = csv.DictWriter(self.pf, fieldnames=self.columns, lineterminator="\n")
        self.rw = csv.DictWriter(self.rf, fieldnames=list(REJECTED_COLUMNS), lineterminator="\n")
        for f, w in ((self.pf, self.pw), (self.rf, self.rw)):
            if f.tell() == 0:
                w.writeheader()
                _fsync(f)
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
            _fsync(self.rf)

    def append(self, rows: Sequence[Mapping[str, str]]) -> None:
        self.tried.update(r["path"] for r in rows)
        self.pw.writerows(rows)
        _fsync(self.pf)

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
    _check_metadata(inputs)
    if not predictor.accepts_metadata and any(f.metadata is not None for f in inputs.files):
        raise BatchError(
            f"the {predictor.engine_name} engine runs image-only graphs, but this bundle's members use patient "
            "metadata and the inputs give some: use --engine torch, or leave the metadata out"
        )
    todo = [f for f in inputs.files if str(f.path) not in done]
    summary = RunSummary(
        out=str(out), bundle_id=bundle.bundle_id, bundle_name=bundle.meta.get("name"), engine=predictor.engine_name,
        classes=classes, inputs=len(inputs.files) + len(inputs.rejected), skipped=len(inputs.files) - len(todo),
        duplicates=inputs.duplicates, options=dict(options or {}), metadata_unmatched=unmatched,
    )
    if report:
        (out / REPORTS_DIR).mkdir(exist_ok=True)
    _write_run_json(out, summary)
    outputs = _Outputs(out, columns)
    t0 = time.perf_counter()
    try:
        with outputs:
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
                tb = time.perf_counter()
                metas = [it["metadata"] for it in good]
                images = [it["image"] for it in good]
                if not good:
                    records = []
                elif any(m is not None for m in metas):
                    records = predictor.predict(images, metadata=metas)
                else:
                    records = predictor.predict(images)
                rows = []
                for it, rec in zip(good, records, strict=True):
                    image_id = ids[Path(it["path"])]
                    rel = ""
                    if report:  # the report first: a row implies its report
                        rel = f"{REPORTS_DIR}/{_report_name(image_id)}"
                        _write_report(out / rel, _render(predictor, it, rec, image_id, pixel_spacing_mm))
                    rows.append(prediction_row(image_id, it["path"], it["sha256"], rec, classes, rel))
                if audit is not None:
                    ms = 1000.0 * (time.perf_counter() - tb) / max(len(good), 1)
                    for it, rec in zip(good, records, strict=True):
                        audit.record(source="predict", input_sha256=it["sha256"], input_name=it["path"], record=rec, elapsed_ms=ms)
                outputs.append(rows)
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
        summary.seconds = round(time.perf_counter() - t0, 3)
        summary.images_per_s = round(summary.done / summary.seconds, 3) if summary.seconds > 0 and summary.done else None
        _write_run_json(out, summary)
    return summary


def _render(predictor: Predictor, item: Mapping[str, Any], record: dict[str, Any], image_id: str, spacing: float | None) -> str:
    from skinlesion.delivery.report import render_report

    result, arrays = predictor.explain(item["image"], pixel_spacing_mm=spacing, record=record, metadata=item.get("metadata"))
    result["input"] = {"image": image_id, "path": item["path"], "sha256": item["sha256"], "shape": list(item["image"].shape)}
    return render_report(result, item["image"], arrays, title=image_id)
