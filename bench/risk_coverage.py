"""Risk-coverage of MC-dropout scores and a review flag fitted on validation; prints one JSON object.

    python bench/risk_coverage.py runs/some-bundle --n-samples 20
    python bench/risk_coverage.py runs/some-bundle --score max_prob --goal coverage --target 0.2 --write

MC dropout (Gal & Ghahramani 2016) over the bundle's members on its validation and test splits;
AURC, E-AURC and optimal AURC (Geifman et al. 2019) and the selective risk at coverage
0.5/0.8/0.9/1.0 for max_prob, predictive entropy, mutual information and expected entropy; the
ReviewFlagger threshold fitted on validation only and its effect on test. bundle.json is changed
only with ``--write``. See ``skinlesion.uncertainty.review_fit.fit_review_flag``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

if not __package__:  # run as a file (python bench/risk_coverage.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

from skinlesion.uncertainty.review_fit import fit_review_flag


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="Decision bundle folder.")
    ap.add_argument("--n-samples", type=int, default=20)
    ap.add_argument("--score", default="mutual_information")
    ap.add_argument("--goal", default="error_fraction")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    ap.add_argument("--head-only", action="store_true", help="Only the head dropout (no stochastic depth).")
    ap.add_argument("--write", action="store_true", help="Record the review flag in bundle.json.")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    return fit_review_flag(
        args.bundle, n_samples=args.n_samples, score=args.score, goal=args.goal, target=args.target, seed=args.seed,
        data_root=args.data_root, include_backbone=not args.head_only, batch_size=args.batch_size,
        persist=args.write, device=args.device,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("risk_coverage.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
