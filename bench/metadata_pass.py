"""Logits with and without metadata: one backbone pass vs two, on a bundle's images (prints one JSON object).

    python bench/metadata_pass.py models/ham10000-cv5/bundle --split test --images 64 --repeats 3 --threads 1

For each metadata fusion member of the bundle, interleaved ``--repeats`` times on the first
``--images`` rows of ``--split`` with the bundle's views and input size: ``two_passes`` runs the
member over the images with the metadata and again with it hidden (what ``calibrate`` and
``evaluate`` did), ``one_pass`` gets both from one backbone pass (the fusion head twice:
``member_view_logits_with_hidden``). Seconds per repeat, the ratio of the medians, and the largest
difference between the two paths' logits (they should be equal).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/metadata_pass.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.ensemble.predict import member_view_logits, member_view_logits_with_hidden
    from skinlesion.ensemble.split import load_bundle_split

    bundle = load_bundle(args.bundle)
    fusion = bundle.fusion_members
    if not fusion:
        raise BenchError(f"{args.bundle} has no metadata fusion member: nothing to compare")
    table = load_bundle_split(bundle, args.split, args.data_root)
    table = table.subset(table.frame["image_id"].iloc[: args.images])
    views = bundle.tta.views
    members = []
    for m in fusion[: args.members]:
        times: dict[str, list[float]] = {"two_passes": [], "one_pass": []}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            given = member_view_logits(m, table, views, batch_size=args.batch_size)
            hidden = member_view_logits(m, table, views, batch_size=args.batch_size, use_metadata=False)
            times["two_passes"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            given1, hidden1 = member_view_logits_with_hidden(m, table, views, batch_size=args.batch_size)
            times["one_pass"].append(time.perf_counter() - t0)
        members.append({
            "member": m.name,
            "input_size": list(m.input_size),
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
            "median_ratio_two_over_one": statistics.median(times["two_passes"]) / statistics.median(times["one_pass"]),
            "max_abs_diff": {
                "with_metadata": float(np.abs(given - given1).max()),
                "metadata_hidden": float(np.abs(hidden - hidden1).max()),
            },
        })
    return {"bundle": str(args.bundle), "split": args.split, "images": len(table), "views": list(views),
            "threads": args.threads, "members": members}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--members", type=int, default=1, help="How many fusion members to time (the first ones).")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("metadata_pass.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
