"""Two runs of one recipe on the same test images: how far apart are their answers? (one JSON object)

    python bench/rerun_compare.py models/ham10000-cv5/eval-test models/ham10000-cv5-rerun/eval-test \
        --manifest models/ham10000-cv5/bundle/split_manifest.csv

Reads what ``skinlesion evaluate`` wrote into each folder (``predictions.csv``: calibrated ensemble
probabilities; ``decisions.csv``: argmax, the shipped diagnosis, raised flags and referral;
``ground_truth.csv``) and compares the second run (the *rerun*) with the first (the *reference*) on
the same images: BACC of the argmax and of the diagnosis, melanoma one-vs-rest AUC, each flag's
sensitivity and specificity and the referral rate, with the difference and its paired
lesion-bootstrap 95% interval (lesion ids from the split manifest); and how often the two runs give
an image the same answer (diagnosis, argmax, each flag, referral), and how far their probabilities
move. Nothing is fitted. The two folders must hold the same images with the same truth.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/rerun_compare.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise BenchError(f"{path}: missing (write it with `skinlesion evaluate BUNDLE --split test --out {path.parent}`)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_evaluation(folder: Path) -> dict[str, Any]:
    """``{images, classes, probs (N, K), truth (N,), argmax, diagnosis, flags (N sets), refer}`` of one folder."""
    pred = _rows(folder / "predictions.csv")
    dec = {r["image"]: r for r in _rows(folder / "decisions.csv")}
    if not pred:
        raise BenchError(f"{folder / 'predictions.csv'}: no rows")
    classes = [c for c in pred[0] if c != "image"]
    images = [r["image"] for r in pred]
    missing = [i for i in images if i not in dec]
    if missing:
        raise BenchError(f"{folder / 'decisions.csv'}: no row for {len(missing)} image(s) of predictions.csv, e.g. {missing[0]}")
    rows = [dec[i] for i in images]
    unknown = sorted({r["truth"] for r in rows} - set(classes))
    if unknown:
        raise BenchError(f"{folder / 'decisions.csv'}: truth {unknown} is not a class of predictions.csv {classes}")
    return {
        "images": images, "classes": classes,
        "probs": np.array([[float(r[c]) for c in classes] for r in pred]),
        "truth": np.array([classes.index(r["truth"]) for r in rows]),
        "argmax": np.array([classes.index(r["argmax"]) for r in rows]),
        "diagnosis": np.array([classes.index(r["diagnosis"]) for r in rows]),
        "flags": [set(filter(None, r.get("flags", "").split(";"))) for r in rows],
        "refer": np.array([r.get("refer", "") == "true" for r in rows]),
    }


def _lesions(manifest: Path, images: Sequence[str]) -> np.ndarray:
    rows = {r["image_id"]: r.get("lesion_id") or r["image_id"] for r in _rows(manifest)}
    missing = [i for i in images if i not in rows]
    if missing:
        raise BenchError(f"{manifest}: no row for {len(missing)} evaluated image(s), e.g. {missing[0]}")
    return np.array([rows[i] for i in images])


def _pair(fn: Any, a: np.ndarray, b: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    from skinlesion.metrics.bootstrap import bootstrap_difference_ci

    d = bootstrap_difference_ci(b, a, groups, fn, y_true=y, n_boot=n_boot, seed=seed)
    return {"reference": round(float(fn(y, a)), 4), "rerun": round(float(fn(y, b)), 4),
            "difference": round(d["estimate"], 4), "ci95": [round(d["low"], 4), round(d["high"], 4)]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from skinlesion.metrics.classification import balanced_accuracy

    ref, new = read_evaluation(Path(args.reference)), read_evaluation(Path(args.rerun))
    if ref["classes"] != new["classes"]:
        raise BenchError(f"the two folders' classes differ: {ref['classes']} vs {new['classes']}")
    if ref["images"] != new["images"]:
        if sorted(ref["images"]) != sorted(new["images"]):
            raise BenchError(f"the two folders hold different images ({len(ref['images'])} vs {len(new['images'])}): "
                             "compare evaluations of the same split")
        order = {i: j for j, i in enumerate(new["images"])}
        idx = np.array([order[i] for i in ref["images"]])
        new = {**new, "images": ref["images"], "flags": [new["flags"][j] for j in idx],
               **{k: new[k][idx] for k in ("probs", "truth", "argmax", "diagnosis", "refer")}}
    if not np.array_equal(ref["truth"], new["truth"]):
        raise BenchError("the two folders give some images a different truth: not the same split or data")
    classes, y, k = ref["classes"], ref["truth"], len(ref["classes"])
    groups = _lesions(Path(args.manifest), ref["images"])
    mel = classes.index("MEL") if "MEL" in classes else 0

    def bacc(yt: np.ndarray, pred: np.ndarray) -> float:
        return balanced_accuracy(yt, pred, k)

    def auc(yt: np.ndarray, score: np.ndarray) -> float:
        pos = yt == mel
        return float(roc_auc_score(pos, score)) if 0 < pos.sum() < len(pos) else float("nan")

    def sensitivity(c: int):  # noqa: ANN202
        return lambda yt, hit: float(hit[yt == c].mean()) if (yt == c).any() else float("nan")

    def specificity(c: int):  # noqa: ANN202
        return lambda yt, hit: float((~hit[yt != c]).mean()) if (yt != c).any() else float("nan")

    n, seed, n_boot = len(y), args.seed, args.n_boot
    metrics: dict[str, Any] = {
        "bacc_argmax": _pair(bacc, ref["argmax"], new["argmax"], y, groups, n_boot, seed),
        "bacc_diagnosis": _pair(bacc, ref["diagnosis"], new["diagnosis"], y, groups, n_boot, seed),
        f"auc_{classes[mel]}": _pair(auc, ref["probs"][:, mel], new["probs"][:, mel], y, groups, n_boot, seed),
    }
    agreement: dict[str, Any] = {
        "diagnosis": round(float((ref["diagnosis"] == new["diagnosis"]).mean()), 4),
        "argmax": round(float((ref["argmax"] == new["argmax"]).mean()), 4),
        "refer": round(float((ref["refer"] == new["refer"]).mean()), 4),
    }
    for name in sorted(set().union(*ref["flags"], *new["flags"])):
        c = classes.index(name)
        a = np.array([name in f for f in ref["flags"]])
        b = np.array([name in f for f in new["flags"]])
        metrics[f"flag_{name}_sensitivity"] = _pair(sensitivity(c), a, b, y, groups, n_boot, seed)
        metrics[f"flag_{name}_specificity"] = _pair(specificity(c), a, b, y, groups, n_boot, seed)
        agreement[f"flag_{name}"] = round(float((a == b).mean()), 4)
    metrics["referred_fraction"] = _pair(lambda yt, r: float(r.mean()), ref["refer"], new["refer"], y, groups, n_boot, seed)
    moved = np.abs(new["probs"] - ref["probs"])
    return {
        "reference": str(args.reference), "rerun": str(args.rerun), "manifest": str(args.manifest),
        "n_images": n, "n_lesions": len(set(groups.tolist())), "n_boot": n_boot,
        "metrics": metrics,
        "same_answer_fraction": agreement,
        "probability_change": {"max": round(float(moved.max()), 4), "mean": round(float(moved.mean()), 4),
                               f"{classes[mel]}_mean": round(float(moved[:, mel].mean()), 4)},
        "diagnosis_changes": int((ref["diagnosis"] != new["diagnosis"]).sum()),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="The first run's evaluation folder (predictions.csv, decisions.csv).")
    ap.add_argument("rerun", help="The second run's evaluation folder, same split.")
    ap.add_argument("--manifest", required=True, help="Split manifest CSV with image_id and lesion_id (the bundle's split_manifest.csv).")
    ap.add_argument("--n-boot", type=int, default=1000, help="Lesion-bootstrap resamples (>= 1).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n_boot < 1:
        ap.error(f"--n-boot must be >= 1; got {args.n_boot}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("rerun_compare", parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
