"""``skinlesion evaluate CHECKPOINT --split test``."""

from __future__ import annotations

from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors


def _fmt(x: object) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder (or its run folder)."),
    split: str = typer.Option("test", "--split", help="train, val or test of the checkpoint's manifest."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default <run>/eval-<split>)."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Evaluate on another split manifest."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples (by lesion) for 95% intervals."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
) -> None:
    """Write metrics.json, predictions.csv (ISIC submission format) and report.html."""
    from skinlesion.evaluation import evaluate_checkpoint

    with user_errors():
        res = evaluate_checkpoint(
            checkpoint, split=split, out_dir=out, data_root=data_root, manifest=manifest, n_boot=n_boot, batch_size=batch_size
        )
    m, ci = res["metrics"], res["intervals"] or {}

    def line(name: str, key: str) -> str:
        iv = ci.get(key) or {}
        return f"{name:<16} {_fmt(m.get(key))}  [{_fmt(iv.get('low'))}, {_fmt(iv.get('high'))}]"

    console.print(f"{split} split: {res['provenance']['n_images']} images, {res['provenance']['n_groups']} lesions")
    console.print(line("BACC", "bacc"))
    console.print(line("malignant BACC", "malignant_bacc"))
    mel = m.get("per_class", {}).get("MEL")
    if mel:
        console.print(f"MEL sensitivity {_fmt(mel.get('sensitivity'))}  specificity {_fmt(mel.get('specificity'))}")
    console.print(f"report: {Path(res['out_dir']) / 'report.html'}")
