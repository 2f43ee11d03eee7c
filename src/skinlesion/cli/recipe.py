"""``skinlesion recipe run|package``: train a whole decision bundle from one recipe, resumably."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from skinlesion.cli._common import console, user_errors

recipe_app = typer.Typer(help="Train a whole decision bundle from a recipe (configs/recipes/).", no_args_is_help=True)


@recipe_app.command("run")
def run_command(
    recipe: str = typer.Argument("ham10000-cpu", help="Recipe YAML file or packaged name (configs/recipes/)."),
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Run folder (a re-run resumes it)."),
    only: list[str] = typer.Option([], "--only", help="Re-run only these steps, e.g. --only card."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Torch threads of each training (default: the presets'); 1 leaves a core free."
    ),
    machine: list[str] = typer.Option(
        [], "--set", help="Training override for every member, after its own: the machine, e.g. --set trainer.devices=4 "
        "--set trainer.strategy=ddp --set trainer.num_nodes=2.",
    ),
    jobs: int = typer.Option(
        1, "--jobs", "-j", min=1, help="Members trained side by side, each in its own process with cores/jobs torch threads, "
        "more when fewer run (unless --threads), its output in members/<name>/train.log; overlapping time counts once.",
    ),
    smoke: bool = typer.Option(
        False, "--smoke", help="Every step on tiny generated data in the recipe's official file layout (CPU, minutes)."
    ),
) -> None:
    """Train the members and the baseline, build, calibrate, fit the review flag, evaluate on test, write the model card."""
    from skinlesion.recipe import load_recipe, run_recipe

    def report(step: str, state: dict) -> None:
        s = state["steps"][step]
        extra = f"; val BACC {s['val_bacc']:.4f}" if s.get("val_bacc") is not None else ""
        console.print(f"step {escape(step)} done in {s['seconds'] / 60:.1f} min{extra}", highlight=False)

    with user_errors():
        r, path = load_recipe(recipe)
        state = run_recipe(r, path, out, only=only or None, on_step=report, threads=threads, smoke=smoke, machine=machine,
                           jobs=jobs)
    from skinlesion.recipe import distributed_rank

    if distributed_rank() > 0:  # a DDP worker: rank 0 reports
        return
    budget = "within" if state["within_budget"] else "OVER"
    where = f"bundle in {escape(str(out / 'bundle'))}, model card {escape(str(out / 'bundle' / 'MODEL_CARD.md'))}"
    if state.get("seeds"):
        s = state["steps"]["seeds"]
        console.print(f"seeds {state['seeds']}: test BACC {s['bacc']} (argmax), {s['diagnosis_bacc']} (diagnosis); "
                      f"{escape(str(out / 'seeds.md'))}", highlight=False)
        where = f"one bundle (and model card) per seed in {escape(str(out))}/seed-<s>/bundle"
    console.print(
        f"recipe {escape(r.name)}{' (smoke)' if smoke else ''}: {state['total_minutes']:.1f} min recorded "
        f"({budget} the {r.budget_minutes:.0f}-min budget); {where}",
        highlight=False,
    )


@recipe_app.command("package")
def package_command(
    out: Path = typer.Argument(Path("runs/default"), help="Recipe run folder."),
    into: Path | None = typer.Option(None, "--into", help="Destination (default: the package's default_bundle folder)."),
) -> None:
    """Copy the run's bundle and model card into the package (what `--bundle default` loads)."""
    from skinlesion.ensemble.bundle import default_bundle_dir
    from skinlesion.recipe import package_bundle

    with user_errors():
        dest = into or default_bundle_dir()
        p = package_bundle(out, dest)
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
    console.print(f"packaged into {escape(str(p))} ({size:.1f} MiB)", highlight=False)
