"""Two members trained on the same fold of a k-fold manifest, compared on that fold (prints one JSON object).

    python bench/fold_ablation.py REFERENCE_CHECKPOINT VARIANT_CHECKPOINT [--tta d4] [--n-boot 1000]
    python bench/fold_ablation.py models/ham10000-cv5/members/f0 runs/ablation/f0-150x200-e12 --tta identity d4
    python bench/fold_ablation.py models/ham10000-cv5/members/f0 models/ham10000-cv5/members/f0 --variant-size 144x192

``REFERENCE`` and ``VARIANT`` may each be several checkpoints, comma-separated: their probabilities
are averaged (an ensemble), e.g. one member against two members of the same fold:

    python bench/fold_ablation.py models/ham10000-cv5/members/f0 models/ham10000-cv5/members/f0,runs/ablation/f0-mix \
        --tta d4 --variant-tta identity,hflip,vflip,rot180 --size 144x192

``--variant-tta VIEWS``: the variant uses these views instead of each ``--tta`` policy (two
members x 4 views cost what one member x 8 views costs).
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

    sides = {"reference": [resolve_checkpoint_dir(Path(p)) for p in args.reference.split(",")],
             "variant": [resolve_checkpoint_dir(Path(p)) for p in args.variant.split(",")]}
    ckpts = [c for cs in sides.values() for c in cs]
    folds = [_fold(c) for c in ckpts]
    if any(f != folds[0] for f in folds) or folds[0][1] is None:
        raise BenchError(f"every checkpoint must be trained on the same fold of one k-fold manifest; got (hash, fold) {folds}")
    size_options = {"reference": (args.size, "--size"),
                    "variant": (args.variant_size, "--variant-size") if args.variant_size else (args.size, "--size")}
    try:
        sizes = {side: parse_hw(text, flag) if text else None for side, (text, flag) in size_options.items()}
    except ValueError as e:
        raise BenchError(str(e)) from None
    bundles = {side: [bundle_from_checkpoint(c) for c in cs] for side, cs in sides.items()}
    members: dict[str, list[Any]] = {side: [b.members[0] for b in bs] for side, bs in bundles.items()}
    for side, ms in members.items():
        for member in ms:
            if sizes[side]:
                member.preprocessing = {**member.preprocessing, "input_size": list(sizes[side])}
    first = bundles["reference"][0]
    table = load_bundle_split(first, "val", args.data_root)
    y = table.labels()
    groups = group_ids(table).to_numpy()
    classes = list(first.classes)
    if "MEL" not in classes:
        raise BenchError(f"no MEL class in {classes}")
    fns = _metric_fns(classes, classes.index("MEL"))
    try:
        policies = {tta: {"reference": TTAPolicy.parse(tta, "prob").views,
                          "variant": TTAPolicy.parse(args.variant_tta or tta, "prob").views} for tta in args.tta}
    except ValueError as e:
        raise BenchError(str(e)) from None
    # every member's logits once, for the union of the views any comparison needs: (N, V, K) per member
    logits: dict[tuple[str, int], dict[str, Any]] = {}
    for side, ms in members.items():
        views = tuple(dict.fromkeys(v for p in policies.values() for v in p[side]))
        for i, m in enumerate(ms):
            z = member_view_logits(m, table, views, batch_size=args.batch_size)
            logits[(side, i)] = {v: z[:, j] for j, v in enumerate(views)}

    def probs(side: str, views: tuple[str, ...]) -> Any:
        """The members' average of their view-averaged probabilities (no temperature)."""
        return np.mean([softmax(np.stack([logits[(side, i)][v] for v in views], axis=1), axis=-1).mean(axis=1)
                        for i in range(len(members[side]))], axis=0)

    out: dict[str, Any] = {"fold": folds[0][1], "split_hash": folds[0][0], "n_images": int(len(y)),
                           "n_lesions": int(len(set(groups))), "n_boot": args.n_boot, "models": {}, "change": {}}
    for side, cs in sides.items():
        out["models"][side] = {"checkpoint": str(cs[0]) if len(cs) == 1 else "+".join(str(c) for c in cs),
                               "checkpoints": [str(c) for c in cs], "input_size": list(members[side][0].input_size)}
    for tta, views in policies.items():
        p = {side: probs(side, views[side]) for side in sides}
        for side in sides:
            out["models"][side][tta] = {
                m: bootstrap_ci(y, p[side], groups, {m: f}, n_boot=args.n_boot, seed=args.seed)[m] for m, f in fns.items()
            }
            if args.variant_tta and side == "variant":
                out["models"][side][tta]["views"] = list(views[side])
        key = tta if not args.variant_tta else f"{tta} vs {args.variant_tta}"
        out["change"][key] = {
            m: bootstrap_difference_ci(p["variant"], p["reference"], groups, f, y_true=y, n_boot=args.n_boot,
                                       seed=args.seed, name=m)
            for m, f in fns.items()
        }
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="Reference checkpoint (or its run folder); several, comma-separated, are "
                    "averaged as one ensemble.")
    ap.add_argument("variant", help="Variant checkpoint trained on the same fold (comma-separated: an ensemble).")
    ap.add_argument("--tta", nargs="+", default=["identity", "d4"], help="TTA policies to compare under.")
    ap.add_argument("--variant-tta", default=None, help="The variant's views instead of each --tta policy (e.g. two "
                    "members x 4 views against one member x D4: equal cost).")
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
