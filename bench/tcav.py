"""TCAV concept bank of a bundle (Kim et al., ICML 2018), in one run (prints one JSON object).

    python bench/tcav.py --bundle runs/bundle --split train --n-per-class 40 --n-runs 10

Learns the bank (ABCDE concepts and/or --concepts-dir folders), saves it (default
``<bundle>/concepts``), times one per-image concept sensitivity, and reports the bank summary,
the member-weighted TCAV table, per class the significant concepts (random-CAV test; "none" said
plainly) and the seconds spent.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence

import torch

if not __package__:  # run as a file (python bench/tcav.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

from skinlesion.ensemble.bundle import load_model_source
from skinlesion.explain.concept_bank import concept_sensitivity, learn_concept_bank


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle")
    src.add_argument("--checkpoint")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n-per-class", type=int, default=40)
    ap.add_argument("--n-runs", type=int, default=10)
    ap.add_argument("--concepts-dir", default=None)
    ap.add_argument("--no-abcde", action="store_true", help="Only user concept folders.")
    ap.add_argument("--min-concept-examples", type=int, default=5)
    ap.add_argument("--out", default=None, help="Bank folder (default <bundle>/concepts).")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="Where the members run (e.g. cuda).")
    ap.add_argument("--json-out", default=None, help="Also write the JSON to this file (e.g. bench/results/tcav_x.json).")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    bundle = load_model_source(bundle=args.bundle, checkpoint=args.checkpoint)
    for m in bundle.members:
        m.model.to(args.device)
    t1 = time.perf_counter()
    bank = learn_concept_bank(bundle, split=args.split, n_per_class=args.n_per_class, concepts_dir=args.concepts_dir,
                              abcde_concepts=not args.no_abcde, n_runs=args.n_runs, seed=args.seed,
                              data_root=args.data_root, min_concept_examples=args.min_concept_examples)
    t2 = time.perf_counter()
    saved = bank.save(args.out)
    from skinlesion.evaluation import load_bundle_split
    from skinlesion.evaluation import SPLITS

    image = None
    if bundle.path is not None:
        other = next(s for s in SPLITS if s != args.split)
        image = load_bundle_split(bundle, other, args.data_root).load_image(0)
    t3 = time.perf_counter()
    sens = concept_sensitivity(bundle, bank, image, 0) if image is not None else {}
    t4 = time.perf_counter()
    return {
        "bench": "tcav",
        "source": args.bundle or args.checkpoint,
        "saved": str(saved),
        "summary": bank.summary(),
        "table": bank.table(),
        "per_class": bank.per_class(),
        "sensitivity_example": {c: s.sensitivity for c, s in sens.items()},
        "seconds": {"load": round(t1 - t0, 2), "learn": round(t2 - t1, 2),
                    "sensitivity_one_image": round(t4 - t3, 3) if sens else None, "total": round(t4 - t0, 2)},
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


def run_and_save(args: argparse.Namespace) -> dict:
    res = run(args)
    if args.json_out:
        import json
        from pathlib import Path

        from skinlesion.metrics.classification import to_jsonable

        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(to_jsonable(res), indent=1, allow_nan=False, default=str) + "\n")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("tcav.py", parse_args(argv), run_and_save)


if __name__ == "__main__":
    sys.exit(main())
