"""Two members trained on the same fold of a k-fold manifest, compared on that fold (prints one JSON object).

    python bench/fold_ablation.py REFERENCE_CHECKPOINT VARIANT_CHECKPOINT [--tta d4] [--n-boot 1000]
    python bench/fold_ablation.py models/ham10000-cv5/members/f0 runs/ablation/f0-150x200-e12 --tta identity d4
    python bench/fold_ablation.py models/ham10000-cv5/members/f0 models/ham10000-cv5/members/f0 --variant-size 144x192

``--size HxW``: both run at this input size (e.g. the size the shipped bundle predicts at).
``--variant-size HxW``: the variant runs at this input size (test-time resolution; the variant may
be the reference checkpoint itself, trained at another size: Touvron et al. 2019, "Fixing the
train-test resolution discrepancy").

Both checkpoints must have been trained with the same ``data.manifest`` and ``data.fold``: the
fold's images are then out-of-fold for both, and each image is predicted by both (with its age, sex
and site), so the comparison is paired. Per model and TTA policy: argmax BACC and melanoma
one-vs-rest AUC, with 95% lesion-bootstrap intervals; and the variant minus the reference with a
paired lesion-bootstrap interval (the same resampled lesions for both sides). One training per
setting: the interval covers which lesions were drawn, not the training's run-to-run spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/fold_ablation.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main


def _fold(checkpoint: Path) -> tuple[str | None, int | None]:
    meta = json.loads((checkpoint / "checkpoint.json").read_text())
    return meta["data"].get("split_hash"), (meta.get("config") or {}).get("data", {}).get("fold")


def _metric_fns(classes: list[str], mel: int) -> dict[str, Any]:
    """BACC as in the evaluation reports, and melanoma one-vs-rest AUC (the library's Mann-Whitney AUC)."""
    from skinlesion.metrics.bootstrap import standard_metric_fns
    from skinlesion.metrics.classification import ovr_auc

    def mel_auc(y: Any, p: Any) -> float:
        return float(ovr_auc(y, p)[mel])

    return {"bacc": standard_metric_fns(classes)["bacc"], "mel_auc": mel_auc}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from scipy.special import softmax

    from skinlesion._params import parse_hw
    from skinlesion.data.splits import group_ids
    from skinlesion.ensemble.bundle import bundle_from_checkpoint
    from skinlesion.ensemble.predict import member_view_logits
    from skinlesion.evaluation import load_bundle_split
    from skinlesion.inference.tta import TTAPolicy
    from skinlesion.metrics.bootstrap import bootstrap_ci, bootstrap_difference_ci
    from skinlesion.models.checkpoint import resolve_checkpoint_dir

    ckpts = [resolve_checkpoint_dir(p) for p in (args.reference, args.variant)]
    folds = [_fold(c) for c in ckpts]
    if folds[0] != folds[1] or folds[0][1] is None:
        raise BenchError(f"both checkpoints must be trained on the same fold of one k-fold manifest; got (hash, fold) {folds}")
    bundles = [bundle_from_checkpoint(c) for c in ckpts]
    for b, (flag, size) in zip(bundles, (("--size", args.size), ("--variant-size", args.variant_size or args.size)), strict=True):
        if size:
            try:
                h, w = parse_hw(size, flag)
            except ValueError as e:
                raise BenchError(str(e)) from None
            member = b.members[0]
            member.preprocessing = {**member.preprocessing, "input_size": [h, w]}
    table = load_bundle_split(bundles[0], "val", args.data_root)
    y = table.labels()
    groups = group_ids(table).to_numpy()
    classes = list(bundles[0].classes)
    if "MEL" not in classes:
        raise BenchError(f"no MEL class in {classes}")
    fns = _metric_fns(classes, classes.index("MEL"))
    out: dict[str, Any] = {"fold": folds[0][1], "split_hash": folds[0][0], "n_images": int(len(y)),
                           "n_lesions": int(len(set(groups))), "n_boot": args.n_boot, "models": {}, "change": {}}
    for tta in args.tta:
        views = TTAPolicy.parse(tta, "prob").views
        probs = []
        for name, b in zip(("reference", "variant"), bundles, strict=True):
            z = member_view_logits(b.members[0], table, views, batch_size=args.batch_size)  # (N, V, K)
            p = softmax(z, axis=-1).mean(axis=1)  # probability average over the views, no temperature
            probs.append(p)
            entry = out["models"].setdefault(name, {"checkpoint": str(ckpts[0 if name == "reference" else 1]),
                                                    "input_size": list(b.members[0].input_size)})
            entry[tta] = {
                m: bootstrap_ci(y, p, groups, {m: f}, n_boot=args.n_boot, seed=args.seed)[m] for m, f in fns.items()
            }
        out["change"][tta] = {
            m: bootstrap_difference_ci(probs[1], probs[0], groups, f, y_true=y, n_boot=args.n_boot, seed=args.seed, name=m)
            for m, f in fns.items()
        }
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", type=Path, help="Reference checkpoint (or its run folder).")
    ap.add_argument("variant", type=Path, help="Variant checkpoint trained on the same fold.")
    ap.add_argument("--tta", nargs="+", default=["identity", "d4"], help="TTA policies to compare under.")
    ap.add_argument("--size", default=None, help="HxW input size of both models (e.g. the bundle's test-time size).")
    ap.add_argument("--variant-size", default=None, help="HxW input size of the variant (test-time resolution); "
                    "default: --size, else its training size.")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("fold_ablation.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
