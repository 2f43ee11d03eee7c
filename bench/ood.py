"""Out-of-distribution gate: candidate scores compared on generated OOD sets (prints one JSON object).

    python bench/ood.py                                   # the packaged default bundle
    python bench/ood.py --bundle runs/some-bundle --max-train-images 2000 --max-test-images 400
    python bench/ood.py --save-gate runs/ood-gate         # also write the chosen gate (JSON + .npz)

``bundle_gate``: the same measurements for the gate the bundle carries (``skinlesion calibrate``
fits it: bundle.json ``decision.ood``), on the same images.

One pass of every bundle member (image only, metadata missing, identity view) over a random subset
of the TRAINING split (``--max-train-images``: the scores are fitted on it), the validation split
(``--max-val-images``; the threshold is its ``--quantile``), a random subset of the TEST split
(``--max-test-images``) and the generated sets of :mod:`skinlesion.ood.sets` (colour-distorted and
blurred ones from the first ``--n-distorted`` test images, in memory). Then, per candidate score
(:mod:`skinlesion.ood.scores`; the members' scores averaged, and each member alone): the fraction
gated on test (should be <= 1 - quantile), the detection rate (fraction gated) per OOD set, AUROC
test vs each set, and the stored size of the fitted gate. ``chosen`` is the candidate with the best
mean detection over the sets among those whose test gated fraction is within two binomial standard
errors of 1 - quantile (detections within ``TIE`` of the best are ties: mean AUROC, then storage).
A candidate that cannot be fitted (kNN with k above the training images) is reported as skipped.
``without_gate`` shows what the bundle says of each OOD set today (calibrated ensemble probabilities and decision rule of the without-metadata operating
point, identity view: no TTA). Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/ood.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

log = logging.getLogger("bench.ood")

#: name -> (score, params): the candidates compared.
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "mahalanobis": ("mahalanobis", {"shrinkage": "ledoit-wolf"}),
    "knn_k1": ("knn", {"k": 1, "max_bank": 2000}),
    "knn_k10": ("knn", {"k": 10, "max_bank": 2000}),
    "knn_k200": ("knn", {"k": 200, "max_bank": 2000}),
    "knn_k50_bank500": ("knn", {"k": 50, "max_bank": 500}),
    "knn_k5_bank500": ("knn", {"k": 5, "max_bank": 500}),
    "mahalanobis+knn_k50_bank500": ("mahalanobis+knn", {"mahalanobis": {"shrinkage": "ledoit-wolf"}, "knn": {"k": 50, "max_bank": 500}}),
    "energy": ("energy", {"temperature": 1.0}),
    "msp": ("msp", {}),
}
#: Mean detections closer than this are ties (one image of a 28-image set moves the mean over 7 sets by 0.005).
TIE = 0.02


def _rows(n: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if cap is None or cap >= n else np.sort(rng.choice(n, cap, replace=False))


def _auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(y, np.r_[inside, outside]))


def _without_gate(bundle: Any, outputs: list[Any]) -> dict[str, Any]:
    """What the bundle predicts for a set: most frequent decision and argmax, their mean probability."""
    pred = bundle.predict_from_logits([o.logits[:, None, :] for o in outputs], metadata_given=False)
    classes = bundle.classes
    res: dict[str, Any] = {"operating_point": str(pred.operating_point[0])}
    for key, idx in (("decision", pred.decision), ("argmax", pred.argmax)):
        counts = np.bincount(idx, minlength=len(classes))
        top = int(counts.argmax())
        res[key] = {
            "most_frequent": classes[top],
            "fraction": round(float(counts[top] / len(idx)), 3),
            "mean_probability_of_it": round(float(pred.probs[:, top].mean()), 3),
            "counts": {c: int(n) for c, n in zip(classes, counts, strict=True) if n},
        }
    res["mean_max_probability"] = round(float(pred.probs.max(axis=1).mean()), 3)
    return res


def _cache_key(bundle: Any, rows: dict[str, np.ndarray], ood_sets: list[Any]) -> str:
    """What the cached features depend on: the bundle, the sampled rows, the generated images."""
    import hashlib

    h = hashlib.sha256(bundle.bundle_id.encode())
    for s in ("train", "val", "test"):
        h.update(rows[s].tobytes())
    for o in ood_sets:
        for im in o.images:
            h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()


def _load_cache(path: str | None, bundle: Any, rows: dict[str, np.ndarray], ood_sets: list[Any]) -> dict[str, list[Any]]:
    """Features cached by an earlier run with the same bundle, rows and sets (``--features-cache``), else {}."""
    from skinlesion.ood import MemberFeatures

    if not path or not Path(path).is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != _cache_key(bundle, rows, ood_sets):
            log.info("%s was written for other images or another bundle: recomputing", path)
            return {}
        out: dict[str, list[Any]] = {}
        for k in z.files:
            if k.endswith("/features"):
                name, m = k.split("/")[:2]
                out.setdefault(name, []).append(MemberFeatures(m, z[k], z[f"{name}/{m}/logits"]))
    log.info("features read from %s", path)
    return out


def _save_cache(path: str, bundle: Any, rows: dict[str, np.ndarray], ood_sets: list[Any], outputs: dict[str, list[Any]]) -> None:
    arrays = {"key": np.array(_cache_key(bundle, rows, ood_sets))}
    for name, outs in outputs.items():
        for o in outs:
            arrays[f"{name}/{o.member}/features"], arrays[f"{name}/{o.member}/logits"] = o.features, o.logits
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _shown(path: Path) -> str:
    """A bundle path as written in the output: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def _storage(gate: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        d = gate.save(tmp)
        return {"npz_bytes": d["arrays"]["bytes"], "json_bytes": len(json.dumps(d)),
                "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in gate.arrays().items()}}


def _evaluate(gate: Any, test: list[Any], sets: dict[str, list[Any]], kinds: dict[str, list[str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    s_test = gate.score(test)
    per_image_ms = (time.perf_counter() - t0) / len(s_test) * 1e3
    res: dict[str, Any] = {
        "threshold": gate.threshold_,
        "val_gated": round(gate.heldout_gated_fraction_, 4),
        "test_gated": round(float(gate.is_out(s_test).mean()), 4),
        "detection": {},
        "auroc": {},
        "score_ms_per_image": round(per_image_ms, 4),
    }
    for name, outs in sets.items():
        s = gate.score(outs)
        res["detection"][name] = round(float(gate.is_out(s).mean()), 4)
        res["auroc"][name] = round(_auroc(s_test, s), 4)
        if name in kinds:
            out, k = gate.is_out(s), np.asarray(kinds[name])
            res.setdefault("detection_by_kind", {})[name] = {v: round(float(out[k == v].mean()), 3) for v in dict.fromkeys(kinds[name])}
    res["mean_detection"] = round(float(np.mean(list(res["detection"].values()))), 4)
    res["min_detection"] = round(float(np.min(list(res["detection"].values()))), 4)
    res["mean_auroc"] = round(float(np.mean(list(res["auroc"].values()))), 4)
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    from skinlesion.ensemble.bundle import DEFAULT_BUNDLE, BundleError, load_bundle, resolve_bundle_path
    from skinlesion.evaluation import load_bundle_split
    from skinlesion.ood import OODGate, table_features
    from skinlesion.ood.features import image_features
    from skinlesion.ood.sets import generated_sets

    try:
        bundle = load_bundle(resolve_bundle_path(args.bundle or DEFAULT_BUNDLE))
    except BundleError as e:
        raise BenchError(str(e)) from None
    rng = np.random.default_rng(args.seed)
    tables = {s: load_bundle_split(bundle, s, args.data_root) for s in ("train", "val", "test")}
    caps = {"train": args.max_train_images, "val": args.max_val_images, "test": args.max_test_images}
    rows = {s: _rows(len(t), caps[s], rng) for s, t in tables.items()}
    t0 = time.perf_counter()
    test_images = [tables["test"].load_image(int(i)) for i in rows["test"][: args.n_distorted]]
    ood_sets = generated_sets(test_images, n=args.n, seed=args.seed)
    cache = _load_cache(args.features_cache, bundle, rows, ood_sets)
    feats, sets = {}, {}
    for s, t in tables.items():
        if s not in cache:
            log.info("features of %d %s images", len(rows[s]), s)
        feats[s] = cache.get(s) or table_features(bundle.members, t, rows=rows[s], batch_size=args.batch_size, device=args.device)
    for o in ood_sets:
        if o.name not in cache:
            log.info("features of %d %s images", len(o), o.name)
        sets[o.name] = cache.get(o.name) or image_features(bundle.members, o.images, batch_size=args.batch_size, device=args.device)
    if args.features_cache and not cache:
        _save_cache(args.features_cache, bundle, rows, ood_sets, {**feats, **sets})
    seconds_features = time.perf_counter() - t0
    y_train = tables["train"].labels()[rows["train"]]
    kinds = {o.name: o.kinds for o in ood_sets if o.kinds}

    names = [m.name for m in bundle.members]
    variants: list[tuple[str, list[str] | None]] = [("mean", None)]
    if len(names) > 1:
        variants += [(f"member:{n}", [n]) for n in names]
    results: dict[str, Any] = {}
    gates: dict[str, Any] = {}
    for cand, (score, params) in CANDIDATES.items():
        results[cand] = {"score": score, "params": params}
        for label, members in variants:
            try:
                gate = OODGate(score, quantile=args.quantile, members=members, params=params).fit(feats["train"], feats["val"], y_train)
            except ValueError as e:
                results[cand]["skipped"] = str(e)
                break
            res = _evaluate(gate, feats["test"], sets, kinds)
            if label == "mean":
                res["storage"] = _storage(gate)
                gates[cand] = gate
                results[cand].update(res)
            else:
                results[cand].setdefault("members_alone", {})[label] = {
                    k: res[k] for k in ("test_gated", "mean_detection", "min_detection", "mean_auroc")
                }
        if "skipped" in results[cand]:
            log.info("%s: skipped (%s)", cand, results[cand]["skipped"])
            continue
        log.info("%s: test gated %.3f, mean detection %.3f", cand, results[cand]["test_gated"], results[cand]["mean_detection"])

    target = 1 - args.quantile
    n_test = len(rows["test"])
    allowed = target + 2 * math.sqrt(max(target * (1 - target), 1e-12) / n_test)
    fitted = {c: r for c, r in results.items() if "skipped" not in r}
    eligible = [c for c in fitted if fitted[c]["test_gated"] <= allowed]
    chosen = None
    if eligible:
        best = max(results[c]["mean_detection"] for c in eligible)
        tied = [c for c in eligible if results[c]["mean_detection"] >= best - TIE]
        chosen = max(tied, key=lambda c: (results[c]["mean_auroc"], -results[c]["storage"]["npz_bytes"]))
    if chosen is not None and args.save_gate:
        out = Path(args.save_gate)
        out.mkdir(parents=True, exist_ok=True)
        d = gates[chosen].save(out)
        (out / "ood_gate.json").write_text(json.dumps(d, indent=1))

    from skinlesion.ood.gate import bundle_gate

    shipped = bundle_gate(bundle)  # the gate `skinlesion calibrate` stored in the bundle, if any
    return {
        "bundle": {"path": _shown(bundle.path), "bundle_id": bundle.bundle_id, "members": names, "classes": list(bundle.classes)},
        "bundle_gate": None if shipped is None else {
            "score": shipped.score_name, "members": shipped.members_, "provenance": shipped.provenance_,
            **_evaluate(shipped, [f for f in feats["test"] if f.member in shipped.members_],
                        {k: [f for f in v if f.member in shipped.members_] for k, v in sets.items()}, kinds),
        },
        "config": {
            "quantile": args.quantile, "seed": args.seed, "images": {s: int(len(r)) for s, r in rows.items()},
            "of": {s: len(t) for s, t in tables.items()}, "n_distorted": len(test_images),
            "features": "pooled penultimate image features (before metadata fusion) and image-only logits, identity view",
            "combine": "mean of the members' scores (members_alone: each member's own gate)",
        },
        "sets": {s.name: {"n": len(s), "description": s.description} for s in ood_sets},
        "candidates": results,
        "table": {
            c: {"test_gated": r["test_gated"], **{f"det:{k}": v for k, v in r["detection"].items()}, "mean_detection": r["mean_detection"],
                "mean_auroc": r["mean_auroc"], "npz_bytes": r["storage"]["npz_bytes"]}
            for c, r in fitted.items()
        },
        "chosen": {
            "name": chosen,
            "rule": f"best mean detection over the sets among candidates with test gated <= {allowed:.4f} "
                    f"({target:.2f} + 2 binomial SE at n={n_test}); detections within {TIE} of the best are ties, "
                    "decided by mean AUROC, then the smaller stored gate",
            "tied": tied if eligible else [],
            "eligible": eligible,
        },
        "without_gate": {name: _without_gate(bundle, outs) for name, outs in sets.items()},
        "without_gate_test": _without_gate(bundle, feats["test"]),
        "seconds_features": round(seconds_features, 1),
        "features_from_cache": bool(cache),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="Bundle folder; 'default' or omitted: the bundle shipped in the package.")
    ap.add_argument("--data-root", default=None, help="Dataset folder, when not where the members were trained.")
    ap.add_argument("--max-train-images", type=int, default=2000, help="Random training images the scores are fitted on.")
    ap.add_argument("--max-val-images", type=int, default=None, help="Validation images the threshold is set on (default: all).")
    ap.add_argument("--max-test-images", type=int, default=400, help="Random test images (gated fraction, AUROC, distortions).")
    ap.add_argument("--n-distorted", type=int, default=40, help="Test images colour-distorted and blurred (each).")
    ap.add_argument("--n", type=int, default=24, help="Size of the generated document/noise sets (synthetic lesions: n/7 per class).")
    ap.add_argument("--quantile", type=float, default=0.95, help="Threshold = this quantile of validation scores.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    ap.add_argument("--features-cache", default=None,
                    help="An .npz of member features: read when it matches this bundle, rows and sets, else written (keep it out of git).")
    ap.add_argument("--save-gate", default=None, help="Write the chosen gate here (ood_gate.json + ood_gate.npz).")
    args = ap.parse_args(argv)
    for k in ("max_train_images", "max_val_images", "max_test_images", "n_distorted", "n"):
        v = getattr(args, k)
        if v is not None and v < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if not 0 < args.quantile <= 1:
        ap.error(f"--quantile must be in (0, 1], got {args.quantile}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("ood.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
