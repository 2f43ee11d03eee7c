"""``skinlesion compare BEFORE AFTER``: a follow-up visit compared with an earlier one (the E of ABCDE)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from skinlesion.cli._common import console, user_errors
from skinlesion.delivery.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS


def _spacings(both: float | None, before: float | None, after: float | None) -> tuple[float | None, float | None]:
    if both is not None and (before is not None or after is not None):
        raise ValueError(
            "Give either --pixel-spacing-mm (one spacing for both images) or --before-spacing and --after-spacing, not both."
        )
    if both is not None:
        return both, both
    return before, after


def compare_command(
    before: Path = typer.Argument(..., help="The earlier image of the lesion (JPEG/PNG...)."),
    after: Path = typer.Argument(..., help="The later image of the same lesion."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: comparison.json, aligned.png, report.html."),
    pixel_spacing_mm: float | None = typer.Option(None, "--pixel-spacing-mm", help="mm per pixel of both images."),
    before_spacing: float | None = typer.Option(None, "--before-spacing", help="mm per pixel of BEFORE (with --after-spacing)."),
    after_spacing: float | None = typer.Option(None, "--after-spacing", help="mm per pixel of AFTER (with --before-spacing)."),
    bundle: str | None = typer.Option(
        None, "--bundle", "-b", help="Decision bundle folder, or 'default' (the packaged bundle; also used without --bundle/--checkpoint)."
    ),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="A checkpoint instead of a bundle."),
    mc_samples: int | None = typer.Option(
        None, "--mc-samples", min=0, help="MC-dropout passes (default: as the bundle's review flag was fitted, else 20; 0: skip)."
    ),
    age: str | None = typer.Option(None, "--age", help="Patient age in years (optional metadata, for both images)."),
    sex: str | None = typer.Option(None, "--sex", help="male or female (optional metadata)."),
    site: str | None = typer.Option(None, "--site", help="Anatomical site (optional metadata)."),
    audit_db: str | None = typer.Option(None, "--audit-db", help="Also log both predictions to this audit database (SQLite file or URL)."),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", min=1, help="Reject files larger than this."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Reject images with more pixels."),
) -> None:
    """Compare two images of one lesion: registration, both segmentations, the change of diameter, area,
    asymmetry, border and colours, of the model's probabilities and flags, and whether the change is
    significant by the measured rule (see `bench/evolution.py`).

    Sizes are compared in millimetres only with pixel spacings; without them the growth criterion is
    not assessed (a different magnification looks like growth)."""
    import time

    from skinlesion.delivery.compare import audit_comparison, compare_visits, image_info, write_comparison
    from skinlesion.delivery.engine import Predictor
    from skinlesion.delivery.images import ImageLimits, decode_image, read_image_bytes
    from skinlesion.ensemble.bundle import load_model_source
    from skinlesion.explain.evolution import check_spacings
    from skinlesion.records.metadata import normalise_metadata

    with user_errors():
        started = time.perf_counter()
        sb, sa = check_spacings(*_spacings(pixel_spacing_mm, before_spacing, after_spacing))
        metadata = normalise_metadata({"age": age, "sex": sex, "site": site}, "the command line")
        limits = ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels)
        data = [read_image_bytes(p, limits=limits) for p in (before, after)]
        images = [decode_image(d, source=str(p), limits=limits) for d, p in zip(data, (before, after), strict=True)]
        inputs = tuple({**image_info(d, im, p.name), "path": str(p)} for d, im, p in zip(data, images, (before, after), strict=True))
        audit = None
        if audit_db:
            from skinlesion.delivery.audit import AuditLog

            audit = AuditLog(audit_db)
        predictor = Predictor(load_model_source(bundle=bundle, checkpoint=checkpoint, use_default=True), mc_samples=mc_samples)
        comparison, arrays = compare_visits(
            images[0], images[1], predictor=predictor, before_spacing_mm=sb, after_spacing_mm=sa, metadata=metadata, inputs=inputs,  # type: ignore[arg-type]
        )
        paths = write_comparison(comparison, images[0], images[1], arrays, out)
        rows = audit_comparison(audit, comparison, source="cli", elapsed_ms=round(1000 * (time.perf_counter() - started), 1)) if audit else []
    s = comparison["summary"]
    colour = {"significant change": "bold red", "no significant change": "green"}.get(s["verdict"], "yellow")
    console.print(f"[{colour}]{escape(s['text'])}[/]", highlight=False, soft_wrap=True)
    for caveat in s["caveats"]:
        console.print(f"[yellow]caveat[/]: {escape(caveat)}", highlight=False, soft_wrap=True)
    reg = comparison["registration"]
    console.print(f"registration fit {reg['fit']} (NCC {reg['ncc']:.3f}, rotation {reg['rotation_deg']:.1f} deg, scale {reg['scale']:.3f}, "
                  f"{reg['scale_source']})", highlight=False, soft_wrap=True)  # fmt: skip
    m = comparison["model"]
    if m:
        d = m["decision"]
        console.print(f"model decision {d['before']} -> {d['after']}; "
                      + ", ".join(f"{k} {v['change']:+.3f}" for k, v in m["probabilities"].items()), highlight=False, soft_wrap=True)  # fmt: skip
    if rows:
        console.print(f"audit rows {rows[0]}, {rows[1]}", highlight=False)
    console.print(f"written {escape(str(paths['json']))}, {escape(str(paths['aligned']))}, {escape(str(paths['report']))}", highlight=False, soft_wrap=True)
