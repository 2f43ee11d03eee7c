"""The audit rows of a ``skinlesion predict`` run: exactly one per predictions.csv row, never in the way.

A batch is written in this order (:func:`skinlesion.delivery.batch.run_predictions`):

1. :meth:`AuditJournal.stage`: the batch's audit entries are appended to ``audit-pending.jsonl`` in the
   out folder and fsynced;
2. the predictions.csv rows are appended and fsynced (the results are safe from here on);
3. :meth:`AuditJournal.flush`: every pending entry is written to the audit log with
   :meth:`~skinlesion.delivery.audit.AuditLog.record_once` and the journal is emptied.

An audit failure (a locked or full database) is logged and counted, never stops the run: the entries
stay in the journal and are tried again after the next batch, at the end, and by the next run into
the same folder. A run killed at any point loses no audit row and duplicates none: on resume,
:meth:`AuditJournal.recover` keeps the staged entries whose rows reached predictions.csv (the others
are predicted again) and writes them; each entry's request id (:func:`batch_request_id`: out folder,
input path and sha256, bundle) is the same when an image is predicted again, and ``record_once``
skips a request id the log already holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skinlesion._json import json_default
from skinlesion.delivery.audit import AuditError

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog

log = logging.getLogger(__name__)
JOURNAL = "audit-pending.jsonl"


def batch_request_id(out: Path, path: str, sha256: str, bundle_id: str) -> str:
    """The audit request id of one input of a batch run: the same for the same out folder, input file
    and content and bundle (so a resumed run's row is recognised), else different."""
    key = "\0".join((str(out.resolve()), path, sha256, bundle_id))
    return "predict-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class AuditJournal:
    """Stages a run's audit entries in ``<out>/audit-pending.jsonl`` until the log holds them."""

    def __init__(self, audit: AuditLog, out: Path) -> None:
        self.audit = audit
        self.path = out / JOURNAL
        self.pending: list[dict[str, Any]] = []
        self.written = 0
        self.failures = 0

    def recover(self, done_paths: Collection[str]) -> None:
        """Take over the entries an earlier run staged whose rows are in predictions.csv, and write them."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a torn last line: its batch never reached predictions.csv
                continue
            if isinstance(entry, dict) and entry.get("input_name") in done_paths:
                kept.append(entry)
        self.pending = kept
        self._save()
        if kept:
            log.info("%d audit row(s) staged by an earlier run are written now", len(kept))
            self.flush()

    def stage(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append entries (keyword arguments of :meth:`AuditLog.record` with a ``request_id``) to the
        journal and fsync it; call before their predictions.csv rows are written."""
        if not entries:
            return
        with self.path.open("ab") as f:
            f.write(b"".join(_line(e) for e in entries))
            f.flush()
            os.fsync(f.fileno())
        self.pending.extend(dict(e) for e in entries)

    def flush(self) -> bool:
        """Write every pending entry to the audit log and empty the journal; False (logged, the entries
        kept for the next try) when the log cannot be written."""
        if not self.pending:
            return True
        try:
            self.written += self.audit.record_once(self.pending)
        except AuditError as e:
            self.failures += 1
            log.warning("audit log not written (%s); %d row(s) kept in %s and tried again", e, len(self.pending), self.path)
            return False
        self.pending = []
        self._save()
        return True

    def _save(self) -> None:
        """Rewrite the journal with the pending entries (removed when none)."""
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(b"".join(_line(e) for e in self.pending))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _line(entry: Mapping[str, Any]) -> bytes:
    return (json.dumps(entry, default=json_default, sort_keys=True) + "\n").encode("utf-8", "surrogatepass")
