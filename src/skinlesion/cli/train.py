"""``skinlesion train``: one backbone per run from a YAML preset plus overrides."""

from __future__ import annotations

from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors


def _parse_seeds(seeds: str | None) -> list[int] | None:
    if not seeds:
        return None
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds must be comma-separated integers like 42,7,123; got {seeds!r}") from None


def train_command(
    config: str = typer.Option("cpu", "--config", "-c", help="YAML file or preset name (see configs/)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override, e.g. --set train.epochs=3 (repeatable)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last state."),
    seeds: str | None = typer.Option(None, "--seeds", help="Train once per seed, e.g. 42,7,123; report mean ± std."),
    devices: str | None = typer.Option(None, "--devices", help="Devices per node (int, or 'auto')."),
    strategy: str | None = typer.Option(None, "--strategy", help="Lightning strategy: auto, ddp, ddp_spawn, ..."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="cpu, gpu, auto."),
    num_nodes: int | None = typer.Option(None, "--num-nodes", help="Nodes for multi-node DDP (torchrun/SLURM)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Shortcut for --set train.epochs=N."),
) -> None:
    """Train a backbone on a lesion-disjoint split; writes a checkpoint (weights + JSON metadata)."""
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train, train_seeds

    extra = list(overrides)
    for key, val in (
        ("trainer.devices", devices),
        ("trainer.strategy", strategy),
        ("trainer.accelerator", accelerator),
        ("trainer.num_nodes", num_nodes),
        ("train.epochs", epochs),
    ):
        if val is not None:
            extra.append(f"{key}={val}")
    with user_errors():
        cfg = load_config(config, extra)
        seed_list = _parse_seeds(seeds)
        if seed_list:
            summary = train_seeds(cfg, seed_list, run_dir=out, resume=resume)
            if "val_bacc_mean" in summary:
                console.print(
                    f"validation BACC over seeds {seed_list}: "
                    f"{summary['val_bacc_mean']:.4f} ± {summary['val_bacc_std']:.4f}"
                )
            return
        res = train(cfg, run_dir=out, resume=resume)
    if res.checkpoint_dir is not None:
        bacc = res.val_metrics.get("bacc")
        console.print(f"checkpoint: {res.checkpoint_dir}")
        if bacc is not None:
            console.print(f"validation BACC {bacc:.4f}  ({res.wall_time_s / 60:.1f} min)")
