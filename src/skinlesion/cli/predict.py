"""``skinlesion predict PATH...``: predictions.csv (ISIC columns + decision, review flag,
uncertainty), rejected.csv and optional HTML reports for files, folders and CSV lists of paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from skinlesion.cli._common import console, err_console, user_errors
from skinlesion.delivery.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _progress_bar() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f} img/s" if speed else "- img/s", style="progress.data.speed")

    return Progress(
        TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
    )


def predict_command(
    paths: list[Path] = typer.Argument(
        ..., help="Image files, folders (recursive) or CSV files with a 'path' column (and optional age, sex, site columns)."
    ),
    bundle: str | None = typer.Option(
        None, "--bundle", "-b", help="Decision bundle folder, or 'default' (the packaged bundle; also used without --bundle/--checkpoint)."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="A checkpoint instead of a bundle."),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder (a re-run resumes it)."),
    report: bool = typer.Option(False, "--report", help="Also write one HTML report per image (reports/)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images read, then written and fsynced, per step (each is predicted on its own)."),
    workers: int = typer.Option(_default_workers(), "--workers", min=0, help="Image-reading processes (0: in the main process)."),
    engine: str = typer.Option(
        "auto", "--engine",
        help="auto (ONNX Runtime when the bundle has a matching export, see `skinlesion export onnx`; else torch), torch or onnx.",
    ),
    onnx_dir: Path | None = typer.Option(None, "--onnx-dir", help="ONNX files (default: <bundle>/onnx)."),
    precision: str = typer.Option("fp32", "--precision", help="ONNX precision: fp32 or int8."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", min=0, help="MC-dropout passes (default: as the bundle's review flag was fitted, else 20; 0: skip)."
    ),
    pixel_spacing_mm: float | None = typer.Option(
        None, "--pixel-spacing-mm", help="mm per pixel for ABCDE in reports; without it sizes stay in pixels."
    ),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", min=1, help="Reject files larger than this."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Reject images with more pixels (decompression bombs)."
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any input was rejected."),
    audit_db: str | None = typer.Option(
        None, "--audit-db", help="Also log every prediction to this audit database (SQLite file or URL)."
    ),
    device: str | None = typer.Option(None, "--device", help="PyTorch device, e.g. cpu or cuda:0 (default: CUDA when available)."),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="CSV of patient metadata: 'image' (file stem) or 'path' column, plus any of age, sex, site."
    ),
) -> None:
    """Predict many images: predictions.csv (ISIC submission columns, decision, review flag, uncertainty),
    rejected.csv (each unusable file with its reason), run.json and, with --report, HTML reports.

    Streams large folders, and resumes: a re-run into the same --out skips what is done.
    Patient metadata (age, sex, site) is optional; metadata fusion members use it, and the columns
    age, sex, site of predictions.csv show what was used.
    """
    from skinlesion.delivery.batch import run_predictions
    from skinlesion.delivery.csv_io import PREDICTIONS_CSV, REJECTED_CSV
    from skinlesion.delivery.engine import ENGINES, Predictor
    from skinlesion.delivery.images import ImageLimits
    from skinlesion.ensemble.bundle import load_model_source

    options = {
        "paths": [str(p) for p in paths], "bundle": str(bundle) if bundle else None,
        "checkpoint": str(checkpoint) if checkpoint else None, "out": str(out), "report": report,
        "batch_size": batch_size, "workers": workers, "engine": engine, "onnx_dir": str(onnx_dir) if onnx_dir else None,
        "precision": precision, "mc_samples": mc_samples, "pixel_spacing_mm": pixel_spacing_mm, "max_bytes": max_bytes,
        "max_pixels": max_pixels, "strict": strict, "audit_db": bool(audit_db), "device": device,
        "metadata": str(metadata) if metadata else None,
    }
    with user_errors():
        if engine not in ENGINES:
            raise ValueError(f"The '--engine' option must be one of {ENGINES}. Got {engine!r} instead.")
        if pixel_spacing_mm is not None and not pixel_spacing_mm > 0:
            raise ValueError(f"The '--pixel-spacing-mm' option must be > 0. Got {pixel_spacing_mm!r} instead.")
        limits = ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels)
        predictor = Predictor(
            load_model_source(bundle=bundle, checkpoint=checkpoint, use_default=True), engine, mc_samples=mc_samples,
            onnx_dir=onnx_dir, precision=precision, device=device,
        )
        audit = None
        if audit_db:
            from skinlesion.delivery.audit import AuditLog

            audit = AuditLog(audit_db)
        bar = _progress_bar()
        task = bar.add_task("predict", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            with bar:
                summary = run_predictions(
                    predictor, paths, out, report=report, batch_size=batch_size, workers=workers,
                    pixel_spacing_mm=pixel_spacing_mm, limits=limits, audit=audit, options=options, progress=progress,
                    metadata=metadata,
                )
        except KeyboardInterrupt:
            err_console.print(f"interrupted: what was written in {escape(str(out))} is kept; run the same command again to resume")
            raise typer.Exit(code=130) from None

    for m in summary.metadata_unmatched:
        err_console.print(f"[yellow]metadata row matches no input[/] {escape(m)}", highlight=False, soft_wrap=True)
    for r in summary.rejected:
        err_console.print(f"[yellow]rejected[/] {escape(r.path)}: {escape(r.reason)} ({escape(r.detail)})", highlight=False, soft_wrap=True)
    rate = f"{summary.images_per_s:.2f} images/s" if summary.images_per_s else "no images predicted"
    dup = f", {summary.duplicates} duplicate input(s) predicted once" if summary.duplicates else ""
    console.print(
        f"{summary.done} done, {summary.skipped} skipped (already done), {len(summary.rejected)} rejected{dup}; "
        f"{rate}; bundle {summary.bundle_id[:12]} ({summary.engine})",
        highlight=False, soft_wrap=True,
    )
    console.print(f"predictions in {escape(str(out / PREDICTIONS_CSV))}"
                  + (f", rejected files in {escape(str(out / REJECTED_CSV))}" if summary.rejected else ""), highlight=False, soft_wrap=True)
    if strict and summary.rejected:
        err_console.print(f"[bold red]error:[/] {len(summary.rejected)} input(s) rejected (--strict)", soft_wrap=True)
        raise typer.Exit(code=1)
