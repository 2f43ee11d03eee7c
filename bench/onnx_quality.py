"""Does ONNX Runtime (fp32, int8) change the bundle's answers? One run on the lesion-disjoint test split (prints JSON).

    python bench/onnx_quality.py --bundle runs/bench-bundle --n-boot 1000
    python bench/onnx_quality.py --bundle runs/bench-bundle --max-images 200   # quicker, subsampled

For eager PyTorch, ORT fp32 and ORT int8 on the same decoded images: balanced accuracy of the
bundle's decision rule (thresholds + priority) and of the argmax, with lesion-bootstrap 95%
intervals; per-class sensitivity; and, against PyTorch, the max abs probability difference, the
decision and argmax agreement, and the BACC change with a paired lesion-bootstrap 95% interval
(the same lesion resamples for both engines). The INT8 graphs were calibrated on validation
images only (see ``onnx.json``); exported into ``<bundle>/onnx`` when missing or stale.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if not __package__:  # run as a file (python bench/onnx_quality.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main
from bench.onnx_speed import onnx_engines  # the same export-when-missing logic

from skinlesion.data.splits import group_ids
from skinlesion.delivery.engine import TorchEngine
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.evaluation import load_bundle_split
from skinlesion.metrics.bootstrap import bootstrap_ci, bootstrap_difference_ci, standard_metric_fns
from skinlesion.metrics.classification import balanced_accuracy, confusion_matrix, one_vs_rest_rates

ENGINES = ("torch_eager", "ort_fp32", "ort_int8")


def bacc_ci(y: np.ndarray, pred: np.ndarray, groups: np.ndarray, k: int, n_boot: int, classes: list[str]) -> dict:
    fns = standard_metric_fns(classes, present=np.unique(y))
    ci = bootstrap_ci(y, np.eye(k)[pred], groups, {"bacc": fns["bacc"]}, n_boot=n_boot, seed=0)["bacc"]
    return {"value": round(balanced_accuracy(y, pred, k), 4), "ci95": [round(ci["low"], 4), round(ci["high"], 4)]}


def paired_delta(y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: np.ndarray, k: int, n_boot: int) -> dict:
    """BACC(b) - BACC(a) with a paired cluster bootstrap over lesions (percentile 95% interval)."""
    ci = bootstrap_difference_ci(b, a, groups, lambda yt, pred: balanced_accuracy(yt, pred, k), y_true=y, n_boot=n_boot)
    return {
        "value": round(ci["estimate"], 4),
        "ci95": [round(ci["low"], 4), round(ci["high"], 4)] if ci["n_boot_valid"] else None,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench-bundle")
    ap.add_argument("--onnx-dir", default=None, help="Default: BUNDLE/onnx.")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--max-images", type=int, default=None, help="Subsample the test split (seeded).")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    bundle = load_bundle(args.bundle)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else Path(args.bundle) / "onnx"
    onnx, export = onnx_engines(bundle, onnx_dir, args.threads, args.data_root)
    engines = {"torch_eager": TorchEngine(bundle, "cpu"), "ort_fp32": onnx["fp32"], "ort_int8": onnx["int8"]}

    test = load_bundle_split(bundle, "test", args.data_root)
    idx = np.arange(len(test))
    if args.max_images is not None and args.max_images < len(test):
        idx = np.sort(np.random.default_rng(args.seed).choice(len(test), size=args.max_images, replace=False))
    y = test.labels()[idx]
    groups = group_ids(test).to_numpy()[idx]
    classes, k = list(bundle.classes), len(bundle.classes)

    logits: dict[str, list[list[np.ndarray]]] = {n: [] for n in engines}
    seconds = dict.fromkeys(engines, 0.0)
    for start in range(0, len(idx), args.batch_size):
        images = [test.load_image(int(i)) for i in idx[start : start + args.batch_size]]
        for name, eng in engines.items():
            t0 = time.perf_counter()
            logits[name].append(eng.view_logits(images))
            seconds[name] += time.perf_counter() - t0
    preds = {}
    for name, parts in logits.items():
        z = [np.concatenate([p[m] for p in parts]) for m in range(len(bundle.members))]
        preds[name] = bundle.predict_from_logits(z)

    results = {}
    ref = preds["torch_eager"]
    for name, p in preds.items():
        rates = one_vs_rest_rates(confusion_matrix(y, p.decision, k))
        row = {
            "bacc_decision_rule": bacc_ci(y, p.decision, groups, k, args.n_boot, classes),
            "bacc_argmax": bacc_ci(y, p.argmax, groups, k, args.n_boot, classes),
            "sensitivity_decision_rule": {c: round(float(v), 4) for c, v in zip(classes, rates["sensitivity"], strict=True)},
            "specificity_decision_rule": {c: round(float(v), 4) for c, v in zip(classes, rates["specificity"], strict=True)},
            "seconds": round(seconds[name], 1),
        }
        if name != "torch_eager":
            row["vs_torch"] = {
                "max_abs_prob_diff": float(np.abs(p.probs - ref.probs).max()),
                "mean_abs_prob_diff": float(np.abs(p.probs - ref.probs).mean()),
                "decision_agreement": round(float((p.decision == ref.decision).mean()), 4),
                "argmax_agreement": round(float((p.argmax == ref.argmax).mean()), 4),
                "bacc_change_decision_rule": paired_delta(y, ref.decision, p.decision, groups, k, args.n_boot),
                "bacc_change_argmax": paired_delta(y, ref.argmax, p.argmax, groups, k, args.n_boot),
            }
        results[name] = row

    return {
        "bench": "onnx_quality",
        "bundle": str(bundle.path),
        "bundle_id": bundle.bundle_id,
        "split": "test (lesion-disjoint)",
        "n_images": int(len(idx)),
        "n_lesions": int(len(set(groups))),
        "subsampled": bool(len(idx) < len(test)),
        "tta_views": list(bundle.tta.views),
        "decision_rule": bundle.spec.decision.rule,
        "n_boot": args.n_boot,
        "onnx": export,
        "results": results,
        "note": "sensitivity is null for classes absent from the evaluated images",
    }


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("onnx_quality.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
