"""Ablations of a recipe member on validation BACC: one training per variant (prints one JSON object).

    python bench/ablation.py                                  # ham10000-cpu's m0 vs 96x128, 144x192, light augmentation
    python bench/ablation.py --variants aug-light --recipe-out runs/default
    python bench/ablation.py --define small model.input_size=[48,64] train.epochs=1 --variants small
    python bench/ablation.py --report-only                   # only what has finished; trains nothing

A variant is the recipe member (its preset and ``set`` overrides: same seed, data split, time cap)
plus the variant's overrides, trained into ``<recipe-out>/ablation/members/<variant>`` by the
recipe's own training step: a run cut off (end of a session) resumes from its last epoch, a
finished one is not trained again. The reference is the member itself, from the recipe run
(``<recipe-out>/members/<member>``; trained here if the recipe has not trained it yet).

Per model: validation BACC of the checkpoint kept (best epoch, identity view, no TTA: the number
the recipe reports per member) and after every epoch, epochs completed of those planned, training
wall minutes, training images/s from the wall time (validation included), and the change against
the reference with a paired 95% lesion-bootstrap interval (``--n-boot``; every model predicts the
validation split again, identity view, with its metadata: ``val_bacc_recomputed``; the interval
covers which validation lesions were drawn, not the training's own run-to-run spread).
Built-in variants (``--variants``):

* ``res96x128``: 96x128 input, 10 epochs planned (as many as fit in the member's time cap);
* ``res144x192``: 144x192 input, 5 epochs planned;
* ``aug-light``: light augmentation (resize, flips, mild colour jitter) instead of medium
  (random resized crops, affine, stronger jitter).

One training per setting: on about 1,300 validation images, differences of a few hundredths are
within run-to-run noise (the same preset and seed has differed by 0.09 between runs when the cap
cut training at different points). The JSON is also written to ``<recipe-out>/ablation/ablation.json``,
which the recipe's model card shows. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/ablation.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

VARIANTS: dict[str, tuple[list[str], str]] = {
    "res96x128": (["model.input_size=[96,128]", "train.epochs=10"], "input 96x128, 10 epochs planned"),
    "res144x192": (["model.input_size=[144,192]", "train.epochs=5"], "input 144x192, 5 epochs planned"),
    "aug-light": (["augment.level=light"], "light augmentation instead of medium"),
}
ABLATION_DIR = "ablation"


def _val_predictions(run_dir: Path, data_root: str | None) -> tuple[Any, Any, Any, str, list[str]]:
    """Argmax on the validation split (identity view, the table's metadata) of one checkpoint:
    ``(labels, predictions, lesion ids, split hash, classes)``."""
    from skinlesion.data.splits import group_ids
    from skinlesion.ensemble.bundle import bundle_from_checkpoint
    from skinlesion.evaluation import load_bundle_split
    from skinlesion.ensemble.predict import member_view_logits

    bundle = bundle_from_checkpoint(run_dir / "checkpoint")
    table = load_bundle_split(bundle, "val", data_root)
    logits = member_view_logits(bundle.members[0], table, ["identity"])[:, 0]
    split_hash = bundle.members[0].meta["data"]["split_hash"]
    return table.labels(), logits.argmax(axis=1), group_ids(table).to_numpy(), split_hash, list(bundle.classes)


def _paired_changes(dirs: dict[str, Path], n_boot: int, data_root: str | None) -> dict[str, dict[str, Any]]:
    """Per model: validation BACC recomputed, and against the reference the change with its paired
    lesion-bootstrap 95% interval (the same resampled lesions for both models)."""
    import numpy as np

    from skinlesion.metrics.bootstrap import bootstrap_difference_ci
    from skinlesion.metrics.classification import balanced_accuracy

    preds = {name: _val_predictions(d, data_root) for name, d in dirs.items()}
    y, ref, groups, ref_hash, classes = preds["reference"]
    k = len(classes)

    def bacc(y_true: np.ndarray, pred: np.ndarray) -> float:
        return balanced_accuracy(y_true, pred, k)

    out: dict[str, dict[str, Any]] = {}
    for name, (y_m, pred, _, split_hash, _) in preds.items():
        if split_hash != ref_hash or len(y_m) != len(y):
            raise BenchError(f"{dirs[name]} was trained on another split than the reference {dirs['reference']}")
        row: dict[str, Any] = {"val_bacc_recomputed": round(balanced_accuracy(y, pred, k), 4)}
        if name != "reference" and n_boot > 0:
            ci = bootstrap_difference_ci(pred, ref, groups, bacc, y_true=y, n_boot=n_boot, seed=0, name="change")
            row["change_ci95"] = [round(ci["low"], 4), round(ci["high"], 4)]
        out[name] = row
    return out


def _model(run_dir: Path, overrides: list[str], what: str) -> dict[str, Any] | None:
    """What one finished training reports (None: not finished)."""
    from skinlesion.model_card import validation_curve

    meta_path = run_dir / "checkpoint" / "checkpoint.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    cfg = meta.get("config") or {}
    t, data = meta["training"], meta["data"]
    seconds = float(t.get("wall_time_s") or 0.0)
    epochs = int(t.get("epochs_completed") or 0)
    return {
        "what": what,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "input_size": (cfg.get("model") or {}).get("input_size"),
        "augment": (cfg.get("augment") or {}).get("level"),
        "val_bacc": meta["validation"].get("bacc"),
        "best_epoch": t.get("best_epoch"),
        "val_bacc_by_epoch": [round(v, 4) for _, v in validation_curve(run_dir)],
        "epochs_completed": epochs,
        "epochs_planned": (cfg.get("train") or {}).get("epochs"),
        "training_minutes": round(seconds / 60, 1),
        "train_images_per_s": round(data["n_train"] * epochs / seconds, 1) if seconds > 0 else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from skinlesion.recipe import MemberSpec, _train, load_recipe, member_dir

    recipe, recipe_path = load_recipe(args.recipe)
    members = {m.name: m for m in recipe.members}
    member = members.get(args.member or recipe.members[0].name)
    if member is None:
        raise BenchError(f"--member {args.member!r} is not a member of recipe {recipe.name!r}; it has {sorted(members)}")
    variants = dict(VARIANTS)
    for definition in args.define or []:
        name, *overrides = definition
        if not overrides:
            raise BenchError(f"--define {name}: give the variant's overrides after its name, e.g. --define {name} augment.level=light")
        variants[name] = (overrides, " ".join(overrides))
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        raise BenchError(f"--variants {unknown}: unknown; built-in {sorted(VARIANTS)}" + (" and --define'd ones" if args.define else ""))
    out = Path(args.recipe_out)
    ablation = out / ABLATION_DIR
    todo = [("reference", member, out)]  # where the recipe trains it: <out>/members/<member>
    todo += [(v, MemberSpec(name=v, preset=member.preset, set=[*member.set, *variants[v][0]]), ablation) for v in args.variants]
    report: dict[str, Any] = {}
    for name, spec, root in todo:
        if not args.report_only:
            _train(recipe, spec, root)
        what = f"recipe member {member.name} ({', '.join(member.set) or member.preset})" if name == "reference" else variants[name][1]
        report[name] = _model(member_dir(root, spec.name), list(spec.set), what)
    ref = report["reference"]
    for name, row in report.items():
        if row is not None and name != "reference":
            row["change_vs_reference"] = (
                round(row["val_bacc"] - ref["val_bacc"], 4) if ref and None not in (ref["val_bacc"], row["val_bacc"]) else None
            )
    finished = {name: Path(row["run_dir"]) for name, row in report.items() if row is not None}
    if "reference" in finished:
        for name, extra in _paired_changes(finished, args.n_boot, recipe.data_root).items():
            report[name].update(extra)
    result = {
        "recipe": recipe.name,
        "recipe_file": str(recipe_path),
        "member": member.name,
        "preset": member.preset,
        "metric": "validation BACC of the kept checkpoint (best epoch, identity view, no TTA)",
        "n_boot": args.n_boot,
        "models": report,
        "not_finished": [n for n, r in report.items() if r is None],
    }
    ablation.mkdir(parents=True, exist_ok=True)
    (ablation / "ablation.json").write_text(json.dumps(result, indent=1))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="ham10000-cpu", help="recipe YAML or packaged name")
    ap.add_argument("--recipe-out", default="runs/default", help="the recipe's run folder (reference member; ablation/ inside)")
    ap.add_argument("--member", default=None, help="the recipe member to vary (default: its first)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"built-in: {', '.join(VARIANTS)}")
    ap.add_argument("--define", nargs="+", action="append", metavar="NAME OVERRIDE", help="a variant: its name, then --set overrides")
    ap.add_argument("--report-only", action="store_true", help="report finished trainings; train nothing")
    ap.add_argument("--n-boot", type=int, default=1000, help="paired lesion-bootstrap resamples of each change (0: none)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return json_main("ablation", args, run)


if __name__ == "__main__":
    sys.exit(main())
