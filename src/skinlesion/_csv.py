"""CSV cells a spreadsheet will not run as formulas (CSV injection), escaped so they read back exactly.

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (an upload named ``=HYPERLINK("http://x","y").png`` would become a
link). Every CSV the project writes passes its cells through :func:`safe_cell`, which puts an
apostrophe in front of such a cell (OWASP's advice), except a plain number such as ``-0.5``. A cell
that already starts with an apostrophe followed by one of those characters (or another apostrophe)
gets one too, so that :func:`read_cell` restores every value exactly: files the project reads back
(predictions.csv on resume, split manifests) give the values that were written.

:func:`writer` and :class:`DictWriter` are :mod:`csv`'s, with every cell (the header too) escaped.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from typing import IO, Any

#: First characters that make a spreadsheet cell a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _escaped(value: str) -> bool:
    """Whether ``value`` is written with an apostrophe in front (see the module docstring)."""
    if not value:
        return False
    if value[0] in FORMULA_START:
        return not (value[0] in "+-" and _NUMBER.fullmatch(value))
    return value[0] == "'" and len(value) > 1 and (value[1] in FORMULA_START or value[1] == "'")


def safe_cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet shows as text (non-strings unchanged: csv writes them as numbers)."""
    return "'" + value if isinstance(value, str) and _escaped(value) else value


def read_cell(cell: str) -> str:
    """The value :func:`safe_cell` wrote as ``cell`` (the inverse; other cells unchanged)."""
    return cell[1:] if cell[:1] == "'" and _escaped(cell[1:]) else cell


def safe_row(row: Iterable[Any]) -> list[Any]:
    return [safe_cell(v) for v in row]


def read_row(row: Sequence[str]) -> list[str]:
    return [read_cell(c) for c in row]


class _Writer:
    """A :func:`csv.writer` that escapes every cell."""

    def __init__(self, w: Any) -> None:
        self._w = w

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._w.writerow(safe_row(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        self._w.writerows(safe_row(r) for r in rows)


def writer(f: IO[str], **kw: Any) -> _Writer:
    """:func:`csv.writer` whose cells pass through :func:`safe_cell`."""
    return _Writer(csv.writer(f, **kw))


class DictWriter(csv.DictWriter):  # type: ignore[type-arg]
    """:class:`csv.DictWriter` whose cells (and header) pass through :func:`safe_cell`."""

    def __init__(self, f: IO[str], fieldnames: Sequence[str], **kw: Any) -> None:
        super().__init__(f, fieldnames, **kw)
        self.writer = _Writer(self.writer)


def read_rows(rows: Iterable[Sequence[str]]) -> list[list[str]]:
    """Rows of :func:`csv.reader` with every cell restored by :func:`read_cell`."""
    return [read_row(r) for r in rows]
