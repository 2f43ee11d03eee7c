"""``skinlesion audit export``: the prediction audit log as CSV."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors

audit_app = typer.Typer(help="The prediction audit log (written by serve and predict --audit-db).", no_args_is_help=True)


def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{option} must be an ISO date or time such as 2026-11-22 or 2026-11-22T10:00. Got {value!r} instead.") from None


@audit_app.command("export")
def export_command(
    db: str | None = typer.Option(None, "--db", help="SQLite file or SQLAlchemy URL (default: skinlesion-audit.sqlite)."),
    out: Path = typer.Option(Path("audit.csv"), "--out", "-o", help="CSV file to write."),
    since: str | None = typer.Option(None, "--since", help="Only rows at or after this UTC time (ISO)."),
    until: str | None = typer.Option(None, "--until", help="Only rows before this UTC time (ISO)."),
) -> None:
    """Write every audited prediction (time, input sha256, bundle id, outputs, decision, flag, user id) to CSV."""
    from skinlesion.delivery.audit import AuditError, AuditLog, database_url

    with user_errors():
        url = database_url(db)
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            raise AuditError(f"No audit database at {url[len('sqlite:///'):]} (serve and predict --audit-db create one)")
        n = AuditLog(url).export_csv(out, since=_when(since, "--since"), until=_when(until, "--until"))
    console.print(f"{n} audit rows written to {out}")
