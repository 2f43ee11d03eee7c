"""Audit log: every prediction served or written, in SQL (SQLite by default, PostgreSQL by URL).

One row per prediction: UTC time, source (``serve``/``predict``), request id, input name and
sha256, bundle id and name, engine, decision, argmax, the threshold that fired, review flag and
uncertainty (columns of the record, :func:`skinlesion.records.record_columns`), the whole
:class:`~skinlesion.records.PredictionRecord` as JSON, the user (an API-key id: a hash prefix, never the
key) and the time taken. Image bytes are stored only when asked (``store_images=True``): an audit
log normally must not become a second copy of patient images.

A batch run writes its rows with :meth:`AuditLog.record_once`: each carries a request id derived
from the run and the input, and a row whose request id the log already holds is not written again,
so a resumed or retried run never duplicates one (:mod:`skinlesion.delivery.audit_journal`).

``skinlesion audit export --db URL --out audit.csv`` writes the rows as CSV (cells a spreadsheet
would run as formulas escaped: :mod:`skinlesion._csv`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from skinlesion import _csv
from skinlesion._json import json_default
from skinlesion.errors import SkinLesionError
from skinlesion.records import PredictionRecord, record_columns

DEFAULT_DB = "skinlesion-audit.sqlite"
#: Columns of ``audit export`` (image bytes are never exported; ``has_image`` says whether stored).
EXPORT_COLUMNS = (
    "id", "time_utc", "source", "request_id", "user_id", "input_name", "input_sha256", "bundle_id",
    "bundle_name", "engine", "decision", "argmax", "threshold_fired", "review_flag", "review_value",
    "epistemic_mutual_information", "aleatoric_expected_entropy", "elapsed_ms", "has_image",
    *("diagnosis", "flags", "refer", "out_of_distribution"), "outputs_json",
)
#: Export columns read from each row's stored record (``outputs_json``), not from a table column:
#: rows written before these outputs existed export them empty, and no database migration is needed.
DERIVED_COLUMNS = ("diagnosis", "flags", "refer", "out_of_distribution")

#: Columns read from the record (:func:`~skinlesion.records.record_columns`), besides ``bundle_id``.
RECORD_COLUMNS = (
    "bundle_name", "engine", "decision", "argmax", "threshold_fired", "review_flag", "review_value",
    "epistemic_mutual_information", "aleatoric_expected_entropy",
)


class AuditError(SkinLesionError):
    """The audit database cannot be opened or written."""


class _Base(DeclarativeBase):
    pass


class AuditRecord(_Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time_utc: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    source: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    input_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_sha256: Mapped[str] = mapped_column(String(64), index=True)
    bundle_id: Mapped[str] = mapped_column(String(128), index=True)
    bundle_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    engine: Mapped[str | None] = mapped_column(String(32), nullable=True)
    decision: Mapped[str] = mapped_column(String(32))
    argmax: Mapped[str | None] = mapped_column(String(32), nullable=True)
    threshold_fired: Mapped[str | None] = mapped_column(String(32), nullable=True)
    review_flag: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    review_value: Mapped[float | None] = mapped_column(Float, nullable=True)
    epistemic_mutual_information: Mapped[float | None] = mapped_column(Float, nullable=True)
    aleatoric_expected_entropy: Mapped[float | None] = mapped_column(Float, nullable=True)
    elapsed_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    outputs_json: Mapped[str] = mapped_column(Text)
    image: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


def api_key_id(key: str) -> str:
    """A stable, non-reversible id for an API key (``key-`` + 12 hex digits of its sha256)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def database_url(db: str | Path | None) -> str:
    """A SQLAlchemy URL: None -> ``sqlite:///skinlesion-audit.sqlite``; a path -> SQLite there."""
    if db is None:
        db = DEFAULT_DB
    s = str(db)
    if "://" in s:
        try:
            make_url(s)
        except (ArgumentError, ValueError) as e:
            raise AuditError(f"Audit database URL {s!r} is not a valid SQLAlchemy URL ({e})") from None
        return s
    p = Path(s).expanduser()
    if p.exists() and p.is_dir():
        raise AuditError(f"Audit database {s!r} is a folder; give a file path or a database URL")
    p.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{p.resolve()}"


class AuditLog:
    """Append-only prediction log (thread-safe). See the module doc for what is stored."""

    def __init__(self, url: str | Path | None = None, *, store_images: bool = False) -> None:
        self.url = database_url(url)
        self.store_images = bool(store_images)
        kw: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kw["connect_args"] = {"check_same_thread": False, "timeout": 30}
        try:
            self.engine = create_engine(self.url, **kw)
            if self.url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            _Base.metadata.create_all(self.engine)
            for index in AuditRecord.__table__.indexes:  # also on a log created before an index was declared
                index.create(self.engine, checkfirst=True)
        except Exception as e:  # noqa: BLE001 - driver errors differ per backend
            raise AuditError(f"Cannot open the audit database {self.url_safe}: {e}") from None
        self._lock = threading.Lock()

    @property
    def url_safe(self) -> str:
        """The URL with any password hidden (for messages)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def record(
        self,
        *,
        source: str,
        input_sha256: str,
        input_name: str | None,
        record: PredictionRecord | Mapping[str, Any],
        user_id: str | None = None,
        image_bytes: bytes | None = None,
        request_id: str | None = None,
        elapsed_ms: float | None = None,
    ) -> int:
        """Store one :class:`~skinlesion.records.PredictionRecord` (or a record read back as JSON).
        Returns its row id."""
        row = self._row(source=source, input_sha256=input_sha256, input_name=input_name, record=record, user_id=user_id,
                        image_bytes=image_bytes, request_id=request_id, elapsed_ms=elapsed_ms)
        try:
            with self._lock, Session(self.engine) as s:
                s.add(row)
                s.commit()
                return int(row.id)
        except Exception as e:  # noqa: BLE001
            raise AuditError(f"Cannot write to the audit database {self.url_safe}: {e}") from None

    def record_once(self, entries: Sequence[Mapping[str, Any]]) -> int:
        """Store each entry (the keyword arguments of :meth:`record`, ``request_id`` required) whose
        ``request_id`` the log does not hold yet, in one transaction. Returns how many were new."""
        ids = [e["request_id"] for e in entries]
        if any(not isinstance(i, str) or not i for i in ids):
            raise ValueError("The 'entries' parameter must give every entry a non-empty 'request_id'.")
        rows = [self._row(**e) for e in entries]
        try:
            with self._lock, Session(self.engine) as s:
                held = set(s.scalars(select(AuditRecord.request_id).where(AuditRecord.request_id.in_(set(ids)))))
                new = []
                for row in rows:
                    if row.request_id not in held:
                        held.add(row.request_id)
                        new.append(row)
                s.add_all(new)
                s.commit()
                return len(new)
        except Exception as e:  # noqa: BLE001
            raise AuditError(f"Cannot write to the audit database {self.url_safe}: {e}") from None

    def _row(
        self, *, source: str, input_sha256: str, input_name: str | None, record: PredictionRecord | Mapping[str, Any],
        user_id: str | None = None, image_bytes: bytes | None = None, request_id: str | None = None,
        elapsed_ms: float | None = None,
    ) -> AuditRecord:
        if "decision" not in (record.get("prediction") or {}):
            raise ValueError("The 'record' parameter must hold prediction.decision (a Predictor record).")
        cols = record_columns(record)
        return AuditRecord(
            time_utc=datetime.now(timezone.utc),
            source=source,
            request_id=request_id,
            user_id=user_id or "anonymous",
            input_name=None if input_name is None else _storable(input_name),
            input_sha256=input_sha256,
            bundle_id="unknown" if cols["bundle_id"] is None else str(cols["bundle_id"]),
            **{c: cols[c] for c in RECORD_COLUMNS},
            elapsed_ms=elapsed_ms,
            outputs_json=json.dumps(record, default=json_default, sort_keys=True),
            image=image_bytes if (self.store_images and image_bytes is not None) else None,
        )

    def count(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)

    def rows(self, *, since: datetime | None = None, until: datetime | None = None, with_images: bool = False) -> list[dict[str, Any]]:
        """Rows as dicts in id order (``image`` only with ``with_images``), optionally in [since, until)."""
        q = select(AuditRecord).order_by(AuditRecord.id)
        if since is not None:
            q = q.where(AuditRecord.time_utc >= _utc(since))
        if until is not None:
            q = q.where(AuditRecord.time_utc < _utc(until))
        out = []
        with Session(self.engine) as s:
            for r in s.scalars(q):
                d = {c: getattr(r, c) for c in EXPORT_COLUMNS if c != "has_image" and c not in DERIVED_COLUMNS}
                d.update(_derived(r.outputs_json))
                d["time_utc"] = _utc(r.time_utc).isoformat()
                d["has_image"] = r.image is not None
                if with_images:
                    d["image"] = r.image
                out.append(d)
        return out

    def export_csv(self, out: str | Path, *, since: datetime | None = None, until: datetime | None = None) -> int:
        """Write the rows (no image bytes) to a CSV file. Returns the number of rows."""
        rows = self.rows(since=since, until=until)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = _csv.DictWriter(f, fieldnames=list(EXPORT_COLUMNS))
            w.writeheader()
            w.writerows(rows)
        tmp.replace(out)
        return len(rows)


def _derived(outputs_json: str) -> dict[str, Any]:
    """The :data:`DERIVED_COLUMNS` of a stored record (None where it has none)."""
    try:
        record = json.loads(outputs_json)
    except (TypeError, ValueError):
        record = None
    if not isinstance(record, dict):
        return dict.fromkeys(DERIVED_COLUMNS)
    cols = record_columns(record)
    return {c: cols.get(c) for c in DERIVED_COLUMNS}


def _storable(text: str) -> str:
    """``text`` with any lone surrogate (a file name that is not UTF-8) written as ``\\udcxx``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utc(t: datetime) -> datetime:
    """SQLite returns naive datetimes: they were stored in UTC."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (export) do not block the writer (serve)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
