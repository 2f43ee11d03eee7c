"""Plain single model vs the shipped decision bundle on the lesion-disjoint test split (prints one JSON object).

    python bench/quality.py                                              # default bundle vs the recipe's baseline
    python bench/quality.py --bundle runs/bench-bundle --baseline runs/cpu-ham10000-lite0 --n-boot 1000
    python bench/quality.py --bundle runs/bench-bundle --reuse           # second run: cached test logits
    python bench/quality.py --bundle models/ham10000-cv5/bundle --baseline none --eval-dir models/ham10000-cv5/eval-test
    python bench/quality.py --bundle runs/bench-bundle --max-images 40 --n-boot 50   # smoke run, subsampled lesions

Side by side, from one pass over the test split of the bundle's manifest (the baseline must have
been trained on the same split: its split hash is checked):

* ``baseline``: one image-only backbone (default: the Lite0 of the CPU preset), argmax, no TTA;
* ``member:<name>``: every bundle member alone, argmax, identity view only (a fusion member also
  with its metadata hidden: ``member:<name> (metadata hidden)``);
* ``ensemble``: the weighted ensemble, argmax of the uncalibrated average, identity view only;
* ``ensemble_tta``: the same with the bundle's TTA views;
* ``ensemble_tta_calibrated``: argmax after the bundle's temperature (with class biases, which
  restore the class priors and so lower BACC: the decision policy re-balances);
* ``shipped``: ensemble + TTA + the bundle's decision policy (``Bundle.policy``: the diagnosis rule,
  or the priority-threshold rule), what ``predict``/``serve`` return;
* ``priority_threshold`` (under the diagnosis policy): the class flags' thresholds used as the decision
  (``priority_threshold_no_metadata``: the same with the metadata hidden);
* ``shipped_no_metadata`` (bundles with metadata fusion members only): the shipped configuration
  with the patient metadata hidden, what a user gets who gives no metadata: every image is decided
  by the bundle's without-metadata operating point (``decision.without_metadata``: temperature and
  thresholds fitted on validation with the metadata hidden) when the bundle has one, else by the
  main point; ``operating_point`` says which, and the targets are checked with its thresholds.

Per row: BACC, malignant BACC and MEL/AKIEC sensitivity/specificity with lesion-bootstrap 95%
intervals (``skinlesion.evaluation.decision_intervals``, seed 0: same resamples for every row, so
the intervals are paired), per-class sensitivity/specificity, and whether the bundle's calibrated
targets (``bundle.json`` ``decision.thresholds[*]``) hold on test, by the point estimate (as
``skinlesion evaluate`` checks them: ``target_outcomes``) and by the 95% interval's lower bound. The
shipped rows add ECE/NLL before and after temperature scaling (``calibration_change``).

Test view logits are written to ``<bundle>/bench-cache`` (``--cache-dir``; for the packaged default
bundle ``runs/bench-cache/default-<id>``, never into the package), one file per model
(weights hash, preprocessing, metadata use, split hash), per view and image id; ``--reuse`` reads
them back, so a second run (or a subsampled one) only runs what is missing. A baseline with the
same weights as a member reuses that member's identity-view logits. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/quality.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main
from bench.decision_quality import KEYS, rounded

log = logging.getLogger("bench.quality")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "runs/default/members/baseline"  # the recipe's image-only baseline
CACHE_DIR = "bench-cache"


# -- arguments --------------------------------------------------------------------------------------
def resolve_bundle_path(value: str | None) -> Path:
    """``--bundle``: a bundle folder, or ``default`` / nothing for the bundle shipped in the package."""
    from skinlesion.ensemble.bundle import DEFAULT_BUNDLE, BundleError
    from skinlesion.ensemble.bundle import resolve_bundle_path as resolve

    try:
        return resolve(DEFAULT_BUNDLE if value is None else value)
    except BundleError as e:
        raise BenchError(f"{e} (this bench takes --bundle PATH, e.g. --bundle runs/bench-bundle)") from None


def cache_dir(bundle: Any, value: str | None) -> Path:
    """``--cache-dir``, else ``BUNDLE/bench-cache``; for the packaged default bundle ``runs/bench-cache/default-<id>``
    (nothing is written into the package, which may be read-only or about to be built into a wheel)."""
    from skinlesion.ensemble.bundle import default_bundle_dir

    if value:
        return Path(value)
    if bundle.path.resolve() == default_bundle_dir():
        return REPO / "runs" / CACHE_DIR / f"default-{bundle.bundle_id[:12]}"
    return bundle.path / CACHE_DIR


def _existing(value: str) -> Path:
    p = Path(value)
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        return REPO / p  # run from elsewhere: paths are relative to the repository root
    return p


def load_baseline(value: str, bundle: Any) -> Any | None:
    """The baseline checkpoint as a one-member bundle (no TTA), or None for ``--baseline none``."""
    from skinlesion.ensemble.bundle import bundle_from_checkpoint
    from skinlesion.errors import CheckpointError

    if value.lower() == "none":
        return None
    path = _existing(value)
    if not path.exists():
        raise BenchError(
            f"The baseline checkpoint {value} does not exist. Train it on the bundle's split (`skinlesion train -c cpu "
            f"--set data.manifest={bundle.path}/split_manifest.csv --out {value}`) or pass --baseline CHECKPOINT / none."
        )
    try:
        base = bundle_from_checkpoint(path)
    except CheckpointError as e:
        raise BenchError(f"--baseline {value}: {e}") from None
    ours, theirs = bundle.spec.provenance.split_hash, base.spec.provenance.split_hash
    if theirs != ours:
        raise BenchError(
            f"The baseline {value} was trained on split {theirs} but the bundle {bundle.path} on split {ours}: "
            "their test images differ, so they cannot be compared. Train the baseline on the bundle's manifest "
            f"(--set data.manifest={bundle.path}/split_manifest.csv) or pass one trained on the same split."
        )
    if list(base.classes) != list(bundle.classes):
        raise BenchError(f"The baseline {value} has classes {list(base.classes)}, the bundle {list(bundle.classes)}.")
    return base


# -- test view logits, cached per model, view and image ---------------------------------------------
def _is_fusion(member: Any) -> bool:
    from skinlesion.models.fusion import MetadataFusionNet

    return isinstance(member.model, MetadataFusionNet)


class LogitStore:
    """Test view logits per (model, view, image id): in memory, and in ``folder`` (read back with ``reuse``).

    A model is its weights hash, preprocessing and metadata use ("table", "hidden", or "image-only"
    for models without metadata, which give the same logits either way).
    """

    def __init__(self, folder: Path | None, split_hash: str, *, reuse: bool, batch_size: int, num_workers: int) -> None:
        self.folder, self.split_hash, self.reuse = folder, split_hash, reuse
        self.batch_size, self.num_workers = batch_size, num_workers
        self._mem: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # digest -> view -> image id -> (K,)
        self.log: list[dict[str, Any]] = []

    def _key(self, member: Any, use_metadata: bool) -> tuple[str, dict[str, Any]]:
        mode = ("table" if use_metadata else "hidden") if _is_fusion(member) else "image-only"
        key = {
            "weights_sha256": member.meta.get("weights_sha256"),
            "preprocessing": member.preprocessing,
            "metadata": mode,
            "split": "test",
            "split_hash": self.split_hash,
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16], key

    def _file(self, digest: str) -> Path | None:
        return self.folder / f"test-logits-{digest}.npz" if self.folder is not None else None

    def _entry(self, digest: str, key: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        if digest in self._mem:
            return self._mem[digest]
        entry: dict[str, dict[str, np.ndarray]] = {}
        f = self._file(digest)
        if self.reuse and f is not None and f.is_file():
            with np.load(f, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == key:
                    for name in z.files:
                        if name.startswith("ids__"):
                            view = name[5:]
                            entry[view] = dict(zip(z[name].tolist(), z[f"logits__{view}"], strict=True))
                else:
                    log.warning("%s was written for another model; ignored", f)
        self._mem[digest] = entry
        return entry

    def _save(self, digest: str, key: dict[str, Any]) -> None:
        f = self._file(digest)
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"key": np.asarray(json.dumps(key, sort_keys=True))}
        for view, rows in self._mem[digest].items():
            ids = sorted(rows)
            arrays[f"ids__{view}"] = np.asarray(ids)
            arrays[f"logits__{view}"] = np.stack([rows[i] for i in ids]).astype(np.float32)
        tmp = f.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        tmp.replace(f)

    def get(self, member: Any, name: str, table: Any, views: Sequence[str], *, use_metadata: bool = True) -> np.ndarray:
        """``(N, V, K)`` logits of ``views`` for the rows of ``table``; runs the model only where missing."""
        from skinlesion.ensemble.predict import member_view_logits

        digest, key = self._key(member, use_metadata)
        entry = self._entry(digest, key)
        ids = table.frame["image_id"].astype(str).tolist()
        missing = sorted({i for v in views for i in ids if i not in entry.get(v, {})})
        t0 = time.perf_counter()
        if missing:
            sub = table.subset(missing) if len(missing) < len(ids) else table
            log.info("%s: %d images x %d views (%s)", name, len(sub), len(views), key["metadata"])
            z = member_view_logits(
                member, sub, list(views), batch_size=self.batch_size, num_workers=self.num_workers,
                use_metadata=use_metadata,
            )
            for j, v in enumerate(views):
                entry.setdefault(v, {}).update(zip(sub.frame["image_id"].astype(str).tolist(), z[:, j], strict=True))
            self._save(digest, key)
        self.log.append({
            "model": name, "views": len(views), "metadata": key["metadata"], "images_run": len(missing),
            "images_cached": len(ids) - len(missing), "seconds": round(time.perf_counter() - t0, 1),
            "cache_file": str(self._file(digest)) if self.folder is not None else None,
        })
        return np.stack([np.stack([entry[v][i] for v in views]) for i in ids]).astype(np.float32)


# -- test split ------------------------------------------------------------------------------------
def subsample_lesions(table: Any, max_images: int | None, seed: int) -> Any:
    """Whole lesions, drawn class by class in turn (seeded), until ``max_images`` images.

    Class-balanced so that a smoke run sees every class (and the targets can be checked); the class
    mix differs from the test split's, so specificities and accuracy are not comparable with a full run.
    """
    import pandas as pd

    from skinlesion.data.splits import group_ids

    if max_images is None or max_images >= len(table):
        return table
    groups = group_ids(table).to_numpy()
    lesions = pd.DataFrame({"g": groups, "y": table.labels()}).groupby("g", sort=True).agg(y=("y", "first"), n=("y", "size"))
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(lesions.index[lesions["y"] == c].to_numpy())) for c in sorted(lesions["y"].unique())]
    chosen: list[str] = []
    total, progress = 0, True
    while progress:
        progress = False
        for q in queues:
            while q and total + int(lesions.at[q[0], "n"]) > max_images:
                q.pop(0)  # too many images for what is left: try this class's next lesion
            if q:
                g = q.pop(0)
                chosen.append(g)
                total += int(lesions.at[g, "n"])
                progress = True
    if not chosen:  # every lesion has more than max_images images
        chosen = [lesions["n"].idxmin()]
    return table.subset(np.isin(groups, chosen))


# -- metrics ---------------------------------------------------------------------------------------
def target_specs(bundle: Any, operating_point: str = "with_metadata") -> dict[str, Any]:
    """The bundle's calibrated targets: ``{class: decision.thresholds[class]}`` with a target (the
    thresholds of ``operating_point``: ``without_metadata`` reads ``decision.without_metadata`` when present)."""
    return {
        c: s for c, s in bundle.threshold_specs(operating_point).items()
        if s.target_sensitivity is not None or s.target_specificity is not None
    }


def row_metrics(
    y: np.ndarray, pred: np.ndarray, groups: np.ndarray, classes: list[str], n_boot: int, targets: dict[str, Any]
) -> dict[str, Any]:
    """Headline metrics with intervals, per-class rates, and the bundle's targets on this row's decisions
    (``skinlesion evaluate``'s decision intervals and target table, plus whether the 95% lower bound meets it)."""
    from skinlesion.evaluation import decision_intervals, target_outcomes
    from skinlesion.metrics.classification import confusion_matrix, one_vs_rest_rates

    t0 = time.perf_counter()
    extra = [f"{m}_{c}" for c in targets for m in ("sensitivity", "specificity") if f"{m}_{c}" not in KEYS]
    iv = decision_intervals(y, pred, groups, classes, n_boot=n_boot, keys=[*KEYS, *extra])  # seed 0: paired rows
    row: dict[str, Any] = {k: rounded(iv[k]) for k in KEYS}
    rates = one_vs_rest_rates(confusion_matrix(y, pred, len(classes)))
    row["per_class"] = {
        c: {"sensitivity": rates["sensitivity"][j], "specificity": rates["specificity"][j], "support": int((y == j).sum())}
        for j, c in enumerate(classes)
    }
    row["targets"] = {}
    for target in target_outcomes(targets, row["per_class"], iv):
        t: dict[str, Any] = {"threshold": target["threshold"], "validation_status": target["validation_status"]}
        met_point, met_lower = [], []
        for m in ("sensitivity", "specificity"):
            goal, got = target[f"target_{m}"], rounded(iv[f"{m}_{target['class']}"])
            ok_lower = None if goal is None or not np.isfinite(got["ci95"][0]) else bool(got["ci95"][0] >= goal)
            t[m] = {"target": goal, **got, "met_point": target[f"{m}_met"], "met_ci_lower": ok_lower}
            if goal is not None:
                met_point.append(target[f"{m}_met"])
                met_lower.append(ok_lower)
        t["met_point"] = None if None in met_point else all(met_point)
        t["met_ci_lower"] = None if None in met_lower else all(met_lower)
        row["targets"][target["class"]] = t
    row["seconds_metrics"] = round(time.perf_counter() - t0, 2)
    return row


def calibration(y: np.ndarray, bundle: Any, logits: list[np.ndarray], operating_point: str = "with_metadata") -> dict[str, Any]:
    """ECE/NLL of the TTA ensemble before and after the temperature scaling of ``operating_point`` (``skinlesion evaluate``'s)."""
    from skinlesion.evaluation import calibration_change

    return {k: v if k == "temperature" else round(v, 4) for k, v in calibration_change(y, bundle, logits, operating_point).items()}


# -- the bench -------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from skinlesion.data.splits import group_ids
    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.evaluation import load_bundle_split
    from skinlesion.metrics.classification import to_jsonable

    t_start = time.perf_counter()
    bundle = load_bundle(resolve_bundle_path(args.bundle))
    baseline = load_baseline(args.baseline, bundle)
    classes = list(bundle.classes)
    missing = sorted({k.split("_", 1)[1] for k in KEYS if k.startswith(("sensitivity_", "specificity_"))} - set(classes))
    if missing:
        raise BenchError(f"The bundle has no class {missing}; this bench reports MEL and AKIEC (classes: {classes}).")
    full = load_bundle_split(bundle, "test", args.data_root)
    test = subsample_lesions(full, args.max_images, args.seed)
    y = test.labels()
    groups = group_ids(test).to_numpy()
    t_load = time.perf_counter() - t_start
    log.info("Test split: %d images of %d lesions%s", len(test), len(set(groups)),
             f" (subsampled from {len(full)})" if len(test) < len(full) else "")

    split_hash = bundle.spec.provenance.split_hash
    folder = cache_dir(bundle, args.cache_dir)
    store = LogitStore(folder, split_hash, reuse=args.reuse, batch_size=args.batch_size, num_workers=args.num_workers)
    t1 = time.perf_counter()
    views = list(bundle.tta.views)
    fusion = [m.name for m in bundle.members if _is_fusion(m)]
    if args.eval_dir:  # the view logits `skinlesion evaluate` saved for this bundle's test split
        from skinlesion.ensemble.build import SPLIT_LOGITS, SPLIT_LOGITS_NO_METADATA, load_split_logits

        ids = test.frame["image_id"].astype(str).tolist()
        logits = load_split_logits(Path(args.eval_dir) / SPLIT_LOGITS, bundle, ids)
        hidden = load_split_logits(Path(args.eval_dir) / SPLIT_LOGITS_NO_METADATA, bundle, ids) if fusion else None
    else:
        logits = [store.get(m, m.name, test, views) for m in bundle.members]
        hidden = [store.get(m, m.name, test, views, use_metadata=False) for m in bundle.members] if fusion else None
    if "identity" in views:
        j = views.index("identity")
        identity = [z[:, [j]] for z in logits]
    else:
        identity = [store.get(m, m.name, test, ["identity"]) for m in bundle.members]
    base_logits = store.get(baseline.members[0], f"baseline {args.baseline}", test, ["identity"]) if baseline else None
    t_logits = time.perf_counter() - t1

    t2 = time.perf_counter()
    targets = target_specs(bundle)
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, description: str, pred: np.ndarray, row_targets: dict[str, Any] | None = None, **extra: Any) -> None:
        log.info("metrics: %s", name)
        goals = targets if row_targets is None else row_targets
        rows[name] = {"description": description, **extra, **row_metrics(y, pred, groups, classes, args.n_boot, goals)}

    if baseline is not None:
        bm = baseline.members[0]
        add("baseline", "single image-only backbone, argmax, no TTA", base_logits[:, 0].argmax(1),
            checkpoint=str(_existing(args.baseline)), backbone=bm.backbone, weights_sha256=bm.meta.get("weights_sha256"),
            metadata=list(bm.model.metadata_features) if _is_fusion(bm) else None,
            same_weights_as_member=next((m.name for m in bundle.members
                                         if m.meta.get("weights_sha256") == bm.meta.get("weights_sha256")), None))
    for m, z in zip(bundle.members, identity, strict=True):
        add(f"member:{m.name}", "one bundle member alone, argmax, identity view only", z[:, 0].argmax(1),
            backbone=m.backbone, metadata="from the table" if _is_fusion(m) else None)
    if hidden is not None and "identity" in views:  # the plain single model a user without metadata gets
        j = views.index("identity")
        for m, z in zip(bundle.members, hidden, strict=True):
            if _is_fusion(m):
                add(f"member:{m.name} (metadata hidden)", "one bundle member alone, argmax, identity view only, "
                    "no metadata given", z[:, j].argmax(1), backbone=m.backbone, metadata="hidden")
    add("ensemble", "weighted ensemble, argmax of the uncalibrated average, identity view only",
        bundle.log_probs(identity, calibrated=False).argmax(1))
    add("ensemble_tta", f"ensemble with the bundle's TTA ({len(views)} views), argmax of the uncalibrated average",
        bundle.log_probs(logits, calibrated=False).argmax(1))
    add("ensemble_tta_calibrated", "the same after the bundle's temperature (and class biases, which restore the "
        "class priors), argmax", bundle.log_probs(logits).argmax(1))
    shipped = bundle.predict_from_logits(logits)
    rule, policy = bundle.spec.decision.rule, bundle.policy

    def answer(pred: Any) -> np.ndarray:  # what predict/serve report as the decision (Bundle.policy)
        return pred.diagnosis if policy == "diagnosis" else pred.decision

    add("shipped", f"ensemble + TTA + the bundle's decision policy ({policy}), as predict/serve return it",
        answer(shipped), metadata="from the table" if fusion else None, calibration=calibration(y, bundle, logits),
        threshold_fired_fraction=round(float((shipped.fired >= 0).mean()), 4))
    if policy == "diagnosis":
        add("priority_threshold", f"the class flags' thresholds as a decision ({rule}: the first flag that fires, else "
            "argmax): not what predict reports, kept for comparison", shipped.decision)
    if hidden is not None:
        no_meta = bundle.predict_from_logits(hidden, metadata_given=np.zeros(len(y), dtype=bool))
        point = bundle.resolve_operating_point("without_metadata")
        add("shipped_no_metadata", "the shipped configuration with the patient metadata hidden (none given)",
            answer(no_meta), row_targets=target_specs(bundle, point), metadata="hidden", operating_point=point,
            calibration=calibration(y, bundle, hidden, point),
            threshold_fired_fraction=round(float((no_meta.fired >= 0).mean()), 4))
        if policy == "diagnosis":
            add("priority_threshold_no_metadata", "the class flags' thresholds of the without-metadata operating point as "
                "a decision, metadata hidden: not what predict reports", no_meta.decision,
                row_targets=target_specs(bundle, point), metadata="hidden", operating_point=point)
    t_metrics = time.perf_counter() - t2

    side = {k: {r: v[k]["value"] for r, v in rows.items()} for k in KEYS}
    result = {
        "bench": "quality",
        "bundle": {
            "path": str(bundle.path),
            "id": bundle.bundle_id,
            "name": bundle.spec.name,
            "members": [{"name": m.name, "backbone": m.backbone, "weight": round(m.weight, 4), "input_size": list(m.input_size),
                         "metadata": list(m.model.metadata_features) if _is_fusion(m) else None} for m in bundle.members],
            "tta_views": views,
            "decision_rule": rule,
            "policy": policy,
            "targets": {c: {"sensitivity": s.target_sensitivity, "specificity": s.target_specificity,
                            "threshold": s.threshold, "validation_status": s.status} for c, s in targets.items()},
            "review_flag": bundle.spec.review is not None,
        },
        "split": "test",
        "split_hash": split_hash,
        "grouped_by": test.group_key,
        "n_images": int(len(test)),
        "n_lesions": int(len(set(groups))),
        "subsampled": bool(len(test) < len(full)),
        "n_test_images_full": int(len(full)),
        "bootstrap": {"n_boot": args.n_boot, "alpha": 0.05, "resampled_by": test.group_key, "seed": 0, "paired_across_rows": True},
        "side_by_side": side,
        "rows": rows,
        "logits": store.log,
        "seconds": {"load": round(t_load, 1), "logits": round(t_logits, 1), "metrics": round(t_metrics, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "notes": [
            "sensitivity is null for classes absent from the evaluated images",
            "targets: met_point compares the test estimate with the target, met_ci_lower the 95% interval's lower bound",
        ] + (["SUBSAMPLED test split (--max-images, class-balanced lesions): a smoke run, not a result"] if len(test) < len(full) else []),
    }
    return to_jsonable(result)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="Bundle folder; 'default' or omitted: the bundle shipped in the package.")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE,
                    help=f"Single-model checkpoint (run folder or checkpoint/) on the bundle's split, or 'none'. Default {DEFAULT_BASELINE}.")
    ap.add_argument("--data-root", default=None, help="Dataset folder, when not where the members were trained.")
    ap.add_argument("--n-boot", type=int, default=1000, help="Lesion-bootstrap resamples (>= 1).")
    ap.add_argument("--max-images", type=int, default=None,
                    help="Class-balanced subsample of whole test lesions, up to this many images (smoke runs).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the lesion subsample.")
    ap.add_argument("--reuse", action="store_true", help="Read cached test view logits (always written) instead of recomputing them.")
    ap.add_argument("--cache-dir", default=None,
                    help=f"Where test view logits are cached (default BUNDLE/{CACHE_DIR}; runs/{CACHE_DIR}/default-ID for the packaged bundle).")
    ap.add_argument("--eval-dir", default=None,
                    help="`skinlesion evaluate`'s folder for this bundle's test split: read its saved view logits "
                         "(with and without metadata) instead of running the members.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    args = ap.parse_args(argv)
    if args.n_boot < 1:
        ap.error(f"--n-boot must be >= 1, got {args.n_boot}")
    if args.max_images is not None and args.max_images < 1:
        ap.error(f"--max-images must be >= 1, got {args.max_images}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("quality.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
