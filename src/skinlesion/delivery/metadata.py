"""Patient metadata at delivery: the ``--metadata`` tables of ``skinlesion predict``, the sites the web
page offers, and the refusal of metadata an engine cannot use.

Checking, normalising and summarising the metadata of one image (the record's ``metadata`` part)
is :mod:`skinlesion.records.metadata`.

``skinlesion predict --metadata FILE.csv`` reads a table with an ``image`` (file stem, or the
``image`` id of predictions.csv) or ``path`` column plus any of ``age``, ``sex``, ``site``
(:func:`read_metadata_csv`); CSV lists of paths may carry the same columns.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from skinlesion.errors import SkinLesionError
from skinlesion.records.metadata import FIELDS

#: Anatomical sites as HAM10000 names them (``localization``), offered by the web page.
HAM10000_SITES: tuple[str, ...] = (
    "abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity", "neck",
    "scalp", "trunk", "upper extremity",
)
#: Columns of a ``--metadata`` table that name the image.
KEY_COLUMNS: tuple[str, ...] = ("path", "image")


class MetadataUnsupportedError(SkinLesionError, ValueError):
    """Metadata was given to an engine that cannot feed it to the bundle's fusion members (ONNX)."""

    reason = "metadata_unsupported_by_engine"


class MetadataFileError(SkinLesionError, ValueError):
    """A ``--metadata`` table that cannot be used: no key column, no metadata column, duplicates."""


# -- --metadata tables --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetadataRow:
    """One row of a ``--metadata`` table: its key (``path`` resolved, or ``image``), raw values, line."""

    column: str
    key: str
    values: dict[str, str]
    where: str


def read_metadata_csv(path: str | Path) -> list[MetadataRow]:
    """Rows of a metadata table: ``path`` (relative to the table's folder) or ``image`` column, plus
    at least one of ``age``, ``sex``, ``site``. Values are checked later, per image (an invalid one
    rejects that image only). Raises :class:`MetadataFileError` for the table's own problems."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataFileError(f"Cannot read the metadata table {p} ({e})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    column = next((c for c in KEY_COLUMNS if c in header), None)
    fields = [f for f in FIELDS if f in header]
    if column is None or not fields:
        raise MetadataFileError(
            f"The metadata table {p} must have a column {' or '.join(KEY_COLUMNS)} and at least one of "
            f"{list(FIELDS)}. Got columns {header} instead."
        )
    rows: list[MetadataRow] = []
    seen: dict[str, str] = {}
    for row in reader:
        where = f"{p.name} line {reader.line_num}"
        key = (row.get(column) or "").strip()
        if not key:
            raise MetadataFileError(f"{where}: the {column!r} cell is empty; name the image or remove the row")
        if column == "path":
            q = Path(key).expanduser()
            key = str((q if q.is_absolute() else p.parent / q).resolve())
        if key in seen:
            raise MetadataFileError(f"{where}: {column} {key!r} is already given on {seen[key]}; give each image once")
        seen[key] = where
        rows.append(MetadataRow(column, key, {f: (row.get(f) or "").strip() for f in fields}, where))
    return rows


__all__ = [
    "HAM10000_SITES",
    "KEY_COLUMNS",
    "MetadataFileError",
    "MetadataRow",
    "MetadataUnsupportedError",
    "read_metadata_csv",
]
