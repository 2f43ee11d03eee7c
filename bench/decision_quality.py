"""Decision-layer quality on a lesion-disjoint test split, in one run (prints one JSON object).

    python bench/decision_quality.py runs/cpu-ham10000-lite0 runs/cpu-ham10000-lite0-first \
        runs/cpu-ham10000-lite1 --out runs/bench-bundle --tta d4

Builds a bundle (weights + temperature on validation), calibrates thresholds on validation twice
(point estimates, as the reference systems did, and with 95% Clopper-Pearson lower bounds), then
predicts the test split once and reports, side by side: the best single member (argmax, no TTA),
the ensemble without TTA, the ensemble with TTA, and the ensemble + TTA + thresholds (both ways, and
the bounded thresholds with ratio conflict resolution; the rates of the three rules on validation
are listed too, for choosing a rule without looking at test):
BACC, malignant BACC and MEL/AKIEC sensitivity/specificity with lesion-bootstrap 95% intervals.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if not __package__:  # run as a file (python bench/decision_quality.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

from skinlesion.calibration.thresholds import ThresholdCalibrator, parse_targets
from skinlesion.data.splits import group_ids
from skinlesion.ensemble.build import build_bundle, load_validation_cache
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.evaluation import decision_intervals, load_bundle_split

KEYS = ("bacc", "malignant_bacc", "sensitivity_MEL", "specificity_MEL", "sensitivity_AKIEC", "specificity_AKIEC")


def rounded(ci: dict) -> dict:
    """A ``bootstrap_ci`` entry as ``{value, ci95}``, 4 decimals."""
    return {"value": round(ci["estimate"], 4), "ci95": [round(ci["low"], 4), round(ci["high"], 4)]}


def summarise(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, classes: list[str], n_boot: int) -> dict:
    """KEYS of the decisions ``pred`` with lesion-bootstrap intervals (``skinlesion evaluate``'s decision
    intervals; seed 0: the same resamples for every call, so the intervals are paired)."""
    return {k: rounded(v) for k, v in decision_intervals(y, pred, groups, classes, n_boot=n_boot, keys=KEYS).items()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--out", default="runs/bench-bundle")
    ap.add_argument("--tta", default="d4")
    ap.add_argument("--weights", default="bacc")
    ap.add_argument("--temperature", default="ensemble")
    ap.add_argument("--targets", default="MEL:sens=0.85,spec=0.85 AKIEC:sens=0.75,spec=0.70")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--reuse", action="store_true",
        help="Reuse the bundle in --out and its cached test logits (test_logits.npz) instead of recomputing them.",
    )
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    if args.reuse and (Path(args.out) / "bundle.json").is_file():
        bundle = load_bundle(args.out)
    else:
        bundle = build_bundle(
            args.checkpoints, args.out, weighting=args.weights, tta=args.tta, temperature=args.temperature,
            batch_size=args.batch_size, overwrite=True,
        )
    t_build = time.perf_counter() - t0
    classes = list(bundle.classes)
    targets = parse_targets(args.targets)
    val_logits, y_val, val_groups = load_validation_cache(bundle)
    p_val = np.exp(bundle.log_probs(val_logits))
    point = ThresholdCalibrator(targets, confidence=None).fit(p_val, y_val, classes)
    bounded = ThresholdCalibrator(targets, confidence=args.confidence).fit(p_val, y_val, classes)
    ratio = ThresholdCalibrator(targets, confidence=args.confidence, conflict="ratio").fit(p_val, y_val, classes)

    t1 = time.perf_counter()
    test = load_bundle_split(bundle, "test")
    cache = Path(args.out) / "test_logits.npz"
    # view logits depend only on the member weights, the views and the images
    key = [*(m.meta["weights_sha256"] for m in bundle.members), *bundle.tta.views, *test.frame["image_id"].astype(str)]
    logits = None
    if args.reuse and cache.is_file():
        with np.load(cache) as z:
            if z["key"].tolist() == key:
                logits = [z[f"m{i}"] for i in range(len(bundle.members))]
    if logits is None:
        logits = bundle.view_logits_table(test, batch_size=args.batch_size)
        np.savez_compressed(cache, key=np.asarray(key), **{f"m{i}": z for i, z in enumerate(logits)})
    t_test = time.perf_counter() - t1
    y = test.labels()
    groups = group_ids(test).to_numpy()
    identity = [bundle.tta.views.index("identity")] if "identity" in bundle.tta.views else None

    member_val_bacc = bundle.spec.weighting.member_bacc
    best = int(np.argmax(member_val_bacc))
    best_pred = logits[best][:, identity[0] if identity else 0].argmax(1)
    ens_no_tta = bundle.log_probs(logits, views=identity).argmax(1) if identity else None
    p_test = np.exp(bundle.log_probs(logits))
    result = {
        "bench": "decision_quality",
        "bundle": str(bundle.path),
        "members": [{"name": m.name, "weight": round(m.weight, 4), "val_bacc": round(b, 4)} for m, b in zip(bundle.members, member_val_bacc, strict=True)],
        "tta": bundle.tta.to_dict(),
        "ensemble_temperature": round(bundle.ensemble_temperature, 4),
        "split_hash": bundle.spec.provenance.split_hash,
        "n_test_images": int(len(test)),
        "n_test_lesions": int(len(set(groups))),
        "seconds": {"build_on_val": round(t_build, 1), "predict_test": round(t_test, 1)},
        "thresholds": {
            "point_estimate": {c: ch.to_dict() for c, ch in point.choices_.items()},
            f"lower_bound_{args.confidence}": {c: ch.to_dict() for c, ch in bounded.choices_.items()},
        },
        "results": {
            f"best_single_member_argmax ({bundle.members[best].name})": summarise(y, best_pred, groups, classes, args.n_boot),
            "ensemble_no_tta_argmax": summarise(y, ens_no_tta, groups, classes, args.n_boot) if ens_no_tta is not None else None,
            "ensemble_tta_argmax": summarise(y, p_test.argmax(1), groups, classes, args.n_boot),
            "ensemble_tta_thresholds_point_estimate": summarise(y, point.predict(p_test), groups, classes, args.n_boot),
            f"ensemble_tta_thresholds_lower_bound_{args.confidence}": summarise(y, bounded.predict(p_test), groups, classes, args.n_boot),
            f"ensemble_tta_thresholds_lower_bound_{args.confidence}_ratio_conflicts": summarise(
                y, ratio.predict(p_test), groups, classes, args.n_boot
            ),
        },
        "validation_decision_rates": {  # point values only: these rates are in-sample
            name: {k: v["value"] for k, v in summarise(y_val, cal.predict(p_val), val_groups, classes, 1).items()}
            for name, cal in (("point_estimate", point), ("lower_bound_priority", bounded), ("lower_bound_ratio", ratio))
        },
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("decision_quality.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
