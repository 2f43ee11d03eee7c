"""Which files a ``skinlesion predict`` run tries, under which ids, with which patient metadata.

:func:`discover_inputs`: image files given on the command line are always tried; folders are
walked recursively and files with an image extension (:data:`IMAGE_EXTENSIONS`, any case) are
tried, every other file found there is *listed* as rejected (``not_an_image``), never dropped
silently; a ``.csv`` file is a list of paths (column ``path`` or ``image_path``; relative paths are
resolved against the CSV's folder, problems name the CSV line). The same file given twice is tried
once.

:func:`image_ids` gives each file its ``image`` id in predictions.csv (the file stem, unique).

Patient metadata (optional; see :mod:`skinlesion.records.metadata`): a CSV list of paths may carry
``age``, ``sex`` and ``site`` columns, and a ``--metadata`` table gives them by ``image`` (file stem
or predictions.csv id) or ``path`` (:func:`attach_metadata`), replacing a list's values for the
columns it has. :func:`check_metadata` moves an input with an invalid value to the rejected
(reason :data:`INVALID_METADATA`).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinlesion.delivery.metadata import MetadataFileError, MetadataRow
from skinlesion.errors import SkinLesionError
from skinlesion.records.metadata import FIELDS, MetadataError, normalise_metadata

#: Extensions of the formats :mod:`skinlesion.delivery.images` opens (any case).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".gif", ".tif", ".tiff", ".bmp", ".dib", ".webp",
    ".jp2", ".j2k", ".avif", ".ppm", ".pgm", ".pbm", ".pnm",
})
PATH_COLUMNS = ("path", "image_path")
#: rejected.csv reason of an image whose metadata is invalid (not an image check: not in images.REASONS).
INVALID_METADATA = "invalid_metadata"
#: rejected.csv reason of an image whose HTML report could not be written (that image only; a re-run tries it again).
REPORT_FAILED = "report_failed"
#: rejected.csv columns: the fields of a :class:`Rejection`.
REJECTED_COLUMNS = ("path", "reason", "detail", "input_sha256")


class BatchError(SkinLesionError):
    """A batch run cannot start: a malformed list of paths or an out folder it must not write into."""


@dataclass(frozen=True)
class InputFile:
    """One file to try: its resolved path, for CSV lists where it was listed, and its metadata
    (raw values as listed until :func:`check_metadata` normalises them; None: none given)."""

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
    """What :func:`discover_inputs` found: the files to try, the files rejected for their extension,
    how many were given twice."""

    files: list[InputFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)  # found in folders without an image extension
    duplicates: int = 0


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


def check_metadata(inputs: Inputs) -> None:
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
