"""A member's table pass in PyTorch vs ONNX Runtime, on a bundle's images (prints one JSON object).

    python bench/table_engine.py models/ham10000-cv5/bundle --split test --images 512 --repeats 2 --threads 1

What ``build``, ``calibrate`` and ``evaluate`` run for every member: the logits of every TTA view with
the metadata given and hidden (``member_view_logits_with_hidden``), over the first ``--images`` rows
of ``--split`` at the bundle's input size. The two engines alternate ``--repeats`` times; the ONNX
Runtime time includes exporting the member's graphs (once per input shape, each pass exports
anew) and checking them against PyTorch. Seconds per repeat, the ratio of the medians, and the
largest difference between the engines' logits and probabilities.
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

if not __package__:  # run as a file (python bench/table_engine.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

ENGINES = ("torch", "onnx")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from skinlesion._malloc import keep_freed_memory
    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.ensemble.predict import member_view_logits_with_hidden
    from skinlesion.ensemble.split import load_bundle_split

    keep_freed_memory()  # as the CLI does
    bundle = load_bundle(args.bundle)
    table = load_bundle_split(bundle, args.split, args.data_root)
    table = table.subset(table.frame["image_id"].iloc[: args.images])
    member = bundle.members[args.member]
    views = bundle.tta.views
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in range(args.repeats):
        for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:
            t0 = time.perf_counter()
            out[engine] = member_view_logits_with_hidden(member, table, views, batch_size=args.batch_size, engine=engine)
            times[engine].append(time.perf_counter() - t0)
    passes = len(table) * len(views)
    med = {e: statistics.median(t) for e, t in times.items()}
    return {
        "bundle": str(args.bundle), "member": member.name, "split": args.split, "images": len(table),
        "views": list(views), "input_size": list(member.input_size), "threads": args.threads,
        "seconds": {e: [round(t, 2) for t in v] for e, v in times.items()},
        "ms_per_image_view": {e: round(1000 * m / passes, 2) for e, m in med.items()},
        "median_ratio_torch_over_onnx": round(med["torch"] / med["onnx"], 3),
        "max_abs_diff": {
            "logits_with_metadata": float(np.abs(out["torch"][0] - out["onnx"][0]).max()),
            "logits_metadata_hidden": float(np.abs(out["torch"][1] - out["onnx"][1]).max()),
            "probabilities": float(np.abs(_softmax(out["torch"][0]) - _softmax(out["onnx"][0])).max()),
        },
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--member", type=int, default=0, help="Which member (its position in bundle.json).")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("table_engine.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
