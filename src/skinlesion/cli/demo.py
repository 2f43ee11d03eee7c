"""``skinlesion demo``: a short end-to-end run (train a few minutes, evaluate, write the report)."""

from __future__ import annotations

from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors

DEFAULT_SHARED = Path("../shared/data/ham10000")


def demo_command(
    data: Path = typer.Option(DEFAULT_SHARED, "--data", help="HAM10000 folder; synthetic lesions are used when it is absent."),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run folder (replaced if it holds an older demo)."),
    minutes: float = typer.Option(4.0, "--minutes", min=0.5, help="Training time budget."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Use synthetic lesions even if real data exists."),
) -> None:
    """Train a small ImageNet-initialised EfficientNet-Lite0, evaluate it on the lesion-disjoint test split."""
    import shutil

    from skinlesion.evaluation import evaluate_checkpoint
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    real = not synthetic and (data / "HAM10000_metadata.csv").is_file()
    if real:
        console.print(f"[bold]demo data:[/] real HAM10000 images from {data.resolve()}")
        overrides = ["data.format=ham10000", f"data.root={data.resolve()}"]
    else:
        why = "requested" if synthetic else f"{data} not found"
        console.print(f"[bold]demo data:[/] synthetic lesions generated on the fly ({why})")
        overrides = ["data.format=synthetic", "data.root=null"]
    overrides.append(f"train.max_time_minutes={minutes}")
    if out.exists():
        shutil.rmtree(out)
    with user_errors():
        cfg = load_config("demo", overrides)
        res = train(cfg, run_dir=out)
        ev = evaluate_checkpoint(res.checkpoint_dir, split="test", out_dir=out / "eval-test", n_boot=500)
    m, ci = ev["metrics"], ev["intervals"] or {}
    bacc_ci = ci.get("bacc", {})
    console.print(
        f"test BACC {m['bacc']:.3f} [{bacc_ci.get('low', float('nan')):.3f}, {bacc_ci.get('high', float('nan')):.3f}] "
        f"on {ev['provenance']['n_images']} images / {ev['provenance']['n_groups']} lesions "
        f"(trained {res.wall_time_s / 60:.1f} min; a short demo, not the shipped model)"
    )
    console.print(f"[bold green]report:[/] {(Path(ev['out_dir']) / 'report.html').resolve()}")
