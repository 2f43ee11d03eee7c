"""``skinlesion serve``: the REST service and web page over one decision bundle (loaded once)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from skinlesion.cli._common import user_errors
from skinlesion.delivery.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)
KEYS_ENV = "SKINLESION_API_KEYS"


def read_api_keys(path: Path | None, env: str | None) -> list[str]:
    """Keys from a file (one a line; blank lines and ``#`` comments ignored) plus ``env`` (comma-separated)."""
    keys: list[str] = []
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"--api-key-file {path} cannot be read ({e.strerror or e})") from None
        from_file = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        if not from_file:
            raise ValueError(f"--api-key-file {path} holds no key (one key a line)")
        keys += from_file
    keys += [s.strip() for s in (env or "").split(",") if s.strip()]
    return list(dict.fromkeys(keys))


def serve_command(
    bundle: str | None = typer.Option(
        None, "--bundle", "-b", help="Decision bundle folder, or 'default' (the packaged bundle; also used without --bundle/--checkpoint)."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="A checkpoint instead of a bundle."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    engine: str = typer.Option(
        "auto", "--engine", help="auto (ONNX Runtime when the bundle has a matching export, else torch), torch or onnx."
    ),
    onnx_dir: Path | None = typer.Option(None, "--onnx-dir", help="ONNX files (default: <bundle>/onnx)."),
    precision: str = typer.Option("fp32", "--precision", help="ONNX precision: fp32 or int8 (exported with --int8)."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", min=0, help="MC-dropout passes (default: as the bundle's review flag was fitted, else 20; 0: no uncertainty)."
    ),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help=f"Accepted API keys, one a line (also ${KEYS_ENV}, comma-separated)."),
    audit_db: str | None = typer.Option(None, "--audit-db", help="Audit log: SQLite file or SQLAlchemy URL (default: skinlesion-audit.sqlite)."),
    audit_store_images: bool = typer.Option(False, "--audit-store-images", help="Also store the uploaded image bytes in the audit log."),
    max_upload_mb: float = typer.Option(DEFAULT_MAX_BYTES / 2**20, "--max-upload-mb", min=0.001, help="Largest accepted upload, MiB."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Largest accepted image, pixels (checked before decoding)."),
    max_in_flight: int | None = typer.Option(
        None, "--max-in-flight", min=1, help="/predict and /explain requests taken at once; more are answered 503 (default 8)."
    ),
    max_active: int | None = typer.Option(
        None, "--max-active", min=1, help="Of those, how many decode and predict at once: one full-size image each (default 2)."
    ),
    request_timeout: float | None = typer.Option(
        None, "--request-timeout", min=0.001,
        help="Seconds from arrival within which an upload must arrive (else 408) and get to work (else 503) (default 60).",
    ),
) -> None:
    """Serve /predict, /explain, /model, /health and a web page; every prediction goes to the audit log."""
    import uvicorn

    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import ENGINES, Predictor
    from skinlesion.delivery.images import ImageLimits
    from skinlesion.delivery.service import create_app
    from skinlesion.ensemble.bundle import load_model_source

    with user_errors():
        if engine not in ENGINES:
            raise ValueError(f"The '--engine' option must be one of {ENGINES}. Got {engine!r} instead.")
        keys = read_api_keys(api_key_file, os.environ.get(KEYS_ENV))
        max_bytes = int(max_upload_mb * 2**20)
        limits = ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels)
        audit = AuditLog(audit_db, store_images=audit_store_images)
        model = load_model_source(bundle=bundle, checkpoint=checkpoint, use_default=True)
        predictor = Predictor(model, engine, mc_samples=mc_samples, onnx_dir=onnx_dir, precision=precision)
        app = create_app(
            predictor, audit=audit, api_keys=keys, limits=limits, max_upload_bytes=max_bytes, max_in_flight=max_in_flight,
            max_active=max_active, request_timeout_s=request_timeout,
        )
    info = predictor.bundle_info()
    log.info("model %s (id %s), engine %s, %d MC-dropout passes", info["name"], info["id"][:12], info["engine"], predictor.mc_samples)
    log.info("audit log: %s%s", audit.url_safe, " (with image bytes)" if audit_store_images else " (no image bytes)")
    if keys:
        log.info("API key required (%d key(s) accepted, header X-API-Key)", len(keys))
    else:
        log.warning("no API key configured: anyone who can reach %s:%d can use the service", host, port)
    log.info("web page and API on http://%s:%d/ (OpenAPI at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_config=None, workers=1)
