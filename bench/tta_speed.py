"""Batched test-time augmentation vs a per-view loop, in one run (prints one JSON object).

    python bench/tta_speed.py --backbone tf_efficientnet_lite0 --size 120x160 --batches 1 16 --views d4

Both paths compute the same logits (checked here, max abs diff reported); images/s counts input
images (each seen through every view). Synthetic tensors: no data loading in the timing.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence

import torch

if not __package__:  # run as a file (python bench/tta_speed.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

from skinlesion._params import parse_hw
from skinlesion.inference.tta import parse_views, tta_logits, tta_logits_loop
from skinlesion.models.factory import create_backbone


def _rate(fn, x: torch.Tensor, repeats: int) -> float:  # noqa: ANN001
    fn(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return x.shape[0] * repeats / (time.perf_counter() - t0)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--size", default="120x160", help="HxW")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="Input batch sizes to time.")
    ap.add_argument("--views", default="d4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-rows", type=int, default=32, help="Also time batched TTA with at most this many rows per call.")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    try:
        h, w = parse_hw(args.size, "--size")
    except ValueError as e:
        raise BenchError(str(e)) from None
    views = parse_views(args.views)
    model = create_backbone(args.backbone, num_classes=7, pretrained="none").eval()
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, h, w)
        with torch.inference_mode():
            diff = float((tta_logits(model, x, views) - tta_logits_loop(model, x, views)).abs().max())
            batched = _rate(lambda t: tta_logits(model, t, views), x, args.repeats)
            looped = _rate(lambda t: tta_logits_loop(model, t, views), x, args.repeats)
            capped = _rate(lambda t: tta_logits(model, t, views, max_rows=args.max_rows), x, args.repeats)
            single = _rate(model, x, args.repeats)
        rows.append(
            {
                "batch": batch,
                "images_per_s_batched": round(batched, 2),
                "images_per_s_loop": round(looped, 2),
                "speedup": round(batched / looped, 3),
                f"images_per_s_batched_max_rows_{args.max_rows}": round(capped, 2),
                "images_per_s_no_tta": round(single, 2),
                "max_abs_logit_diff": diff,
            }
        )
    return {
        "bench": "tta_speed",
        "backbone": args.backbone,
        "input_size": [h, w],
        "views": list(views),
        "threads": args.threads,
        "results": rows,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("tta_speed.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
