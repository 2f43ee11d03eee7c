"""Audit log: rows hold what an auditor needs, never the API key, images only when asked."""

from __future__ import annotations

import csv
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.delivery.audit import AuditError, AuditLog, api_key_id, database_url


def _record(decision: str = "MEL", flag: bool | None = True) -> dict:
    return {
        "notice": "decision support",
        "bundle": {"id": "abc123", "name": "tiny", "engine": "torch"},
        "prediction": {"probabilities": {"MEL": 0.7, "NV": 0.3}, "argmax": "MEL", "decision": decision, "threshold_fired": "MEL"},
        "uncertainty": {
            "epistemic_mutual_information": 0.12,
            "aleatoric_expected_entropy": 0.5,
            "review": {"flag": flag, "value": 0.12, "threshold": 0.1},
        },
    }


def test_record_and_read_back(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite")
    key = "s3cret-key"
    rid = log.record(
        source="serve", input_sha256="f" * 64, input_name="x.jpg", record=_record(), user_id=api_key_id(key),
        image_bytes=b"\xff\xd8 image", request_id="r1", elapsed_ms=12.5,
    )
    assert rid == 1 and log.count() == 1
    (row,) = log.rows(with_images=True)
    assert row["decision"] == "MEL" and row["review_flag"] is True and row["bundle_id"] == "abc123"
    assert row["input_sha256"] == "f" * 64 and row["threshold_fired"] == "MEL" and row["engine"] == "torch"
    assert row["image"] is None and row["has_image"] is False  # not stored unless asked
    assert row["user_id"] == api_key_id(key) and key not in json.dumps(row, default=str)
    assert json.loads(row["outputs_json"])["prediction"]["probabilities"]["MEL"] == 0.7
    assert datetime.fromisoformat(row["time_utc"]).tzinfo is not None


def test_images_stored_only_when_asked(tmp_path: Path) -> None:
    log = AuditLog(f"sqlite:///{tmp_path / 'b.sqlite'}", store_images=True)
    log.record(source="predict", input_sha256="0" * 64, input_name=None, record=_record(flag=None), image_bytes=b"abc")
    (row,) = log.rows(with_images=True)
    assert row["image"] == b"abc" and row["review_flag"] is None and row["user_id"] == "anonymous"


def test_concurrent_writes_all_land(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "c.sqlite")
    threads = [
        threading.Thread(target=lambda i=i: log.record(source="serve", input_sha256=f"{i:064d}", input_name=None, record=_record()))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count() == 16 and len({r["input_sha256"] for r in log.rows()}) == 16


def test_bad_record_and_database_are_named(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "d.sqlite")
    with pytest.raises(ValueError, match="prediction.decision"):
        log.record(source="serve", input_sha256="0", input_name=None, record={"prediction": {}})
    with pytest.raises(AuditError, match="folder"):
        database_url(tmp_path)
    with pytest.raises(AuditError, match="not a valid SQLAlchemy URL"):
        database_url("nodriver+://::bad")


def test_export_cli_with_time_window(tmp_path: Path) -> None:
    db = tmp_path / "e.sqlite"
    log = AuditLog(db)
    for d in ("MEL", "NV", "BCC"):
        log.record(source="serve", input_sha256="1" * 64, input_name=f"{d}.jpg", record=_record(d))
    out = tmp_path / "audit.csv"
    res = CliRunner().invoke(app, ["audit", "export", "--db", str(db), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["decision"] for r in rows] == ["MEL", "NV", "BCC"] and "image" not in rows[0]
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    res = CliRunner().invoke(app, ["audit", "export", "--db", str(db), "--out", str(out), "--since", future])
    assert res.exit_code == 0 and list(csv.DictReader(out.open())) == []
    res = CliRunner().invoke(app, ["audit", "export", "--db", str(tmp_path / "none.sqlite"), "--out", str(out)])
    assert res.exit_code == 1 and "No audit database" in res.output
    res = CliRunner().invoke(app, ["audit", "export", "--db", str(db), "--since", "yesterday"])
    assert res.exit_code == 1 and "--since" in res.output
