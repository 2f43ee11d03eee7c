"""Members trained one after another or side by side (``skinlesion recipe run --jobs``), timed whole.

    python bench/recipe_jobs.py --members 2 --train-batches 90 --val-batches 45 --rounds 2

Each round runs, in turn, the same short trainings of the default recipe's members (the packaged
``cpu-cv`` preset: Lite0 + age/sex/site fusion at 120x160, real HAM10000 images, folds 0..N-1) in
two ways, each a fresh ``skinlesion recipe run`` in its own process and folder:

    sequential    --jobs 1 --threads T      (one training at a time, T torch threads; T = --cores)
    side_by_side  --jobs J --threads T/J    (J trainings at once, T/J threads each)

and prints one JSON object: the wall seconds of every run, the medians and the paired ratio
(sequential / side_by_side per round; above 1 means side by side is faster). The trainings are
short (one epoch cut to ``--train-batches`` and ``--val-batches`` batches), so each member's fixed
start-up (imports, decoding the images into memory) weighs more than in a 20-epoch training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

if not __package__:  # run as a file (python bench/recipe_jobs.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

ROOT = Path(__file__).resolve().parents[1]


def _recipe(folder: Path, args: argparse.Namespace) -> Path:
    short = ["train.epochs=1", "train.warmup_epochs=0", f"train.limit_train_batches={args.train_batches}",
             f"train.limit_val_batches={args.val_batches}", f"data.root={args.root}", *args.set]
    spec = {
        "name": "jobs-bench",
        "members": [{"name": f"f{k}", "preset": args.preset,
                     "set": [*([f"data.fold={k}"] if args.folds else []), f"seed={42 + k}", *short]}
                    for k in range(args.members)],
    }
    p = folder / "jobs-bench.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _run(recipe: Path, out: Path, members: int, jobs: int, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    only = [a for k in range(members) for a in ("--only", f"train:f{k}")]
    cmd = [sys.executable, "-m", "skinlesion", "recipe", "run", str(recipe), "--out", str(out), *only,
           "--jobs", str(jobs), "--threads", str(threads)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.members < 2 or args.jobs < 2 or args.cores < args.jobs:
        raise BenchError("need --members >= 2, --jobs >= 2 and --cores >= --jobs")
    if not Path(args.root).is_dir():
        raise BenchError(f"{args.root}: no such data folder (default: ../shared/data/ham10000)")
    modes = {"sequential": (1, args.cores), "side_by_side": (args.jobs, args.cores // args.jobs)}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="recipe-jobs-") as tmp:
        recipe = _recipe(Path(tmp), args)
        for r in range(args.rounds):
            for mode in (list(modes) if r % 2 == 0 else list(reversed(modes))):  # alternate who goes first
                jobs, threads = modes[mode]
                walls[mode].append(round(_run(recipe, Path(tmp) / mode, args.members, jobs, threads), 1))
    ratios = [s / p for s, p in zip(walls["sequential"], walls["side_by_side"], strict=True)]
    return {
        "bench": "recipe_jobs", "preset": args.preset, "members": args.members, "cores": args.cores,
        "train_batches": args.train_batches, "val_batches": args.val_batches,
        "modes": {m: {"jobs": j, "threads_each": t} for m, (j, t) in modes.items()},
        "wall_s": walls, "median_wall_s": {m: statistics.median(w) for m, w in walls.items()},
        "speedup_per_round": [round(x, 3) for x in ratios], "median_speedup": round(statistics.median(ratios), 3),
        "cpu_count": os.cpu_count(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="torch threads in all (default: all cores)")
    ap.add_argument("--train-batches", type=int, default=90)
    ap.add_argument("--val-batches", type=int, default=45)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "ham10000"))
    ap.add_argument("--preset", default="cpu-cv", help="the members' training preset (default: the shipped recipe's)")
    ap.add_argument("--set", nargs="*", default=[], help="more overrides of every member")
    ap.add_argument("--no-folds", dest="folds", action="store_false", help="no data.fold=k (presets without k folds)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("recipe_jobs.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
