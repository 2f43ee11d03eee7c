"""What each recipe lever buys, from one bundle's held-out predictions (prints one JSON object).

    python bench/levers.py models/ham10000-cv5/bundle                      # validation (out-of-fold) only
    python bench/levers.py models/ham10000-cv5/bundle --test               # also the test split (K members)
    python bench/levers.py models/ham10000-cv5/bundle --versus OLD_BUNDLE  # this bundle vs another of the same members

Levers measured without training anything again, each as variant minus reference with a paired
lesion-bootstrap 95% interval (argmax BACC and melanoma one-vs-rest AUC; the same resampled lesions
on both sides; :func:`skinlesion.metrics.bootstrap.bootstrap_difference_ci`):

* ``tta``: the bundle's views averaged vs the identity view alone (and a 4-view subset: identity,
  flips and rot180) on the validation rows (out-of-fold for a cross-fitted bundle);
* ``metadata``: the patient's age, sex and site given vs hidden (the without-metadata cache);
* ``ensemble`` (``--test``): the K-member average vs each single member on the test split (on
  validation a cross-fitted bundle has one member per row, so the ensemble's gain is only
  measurable on test).
* ``stacking`` (a cross-fitted bundle): a class-balanced multinomial logistic regression on the
  view-averaged log-probabilities, alone and with the patient's age, sex and site (one-hot; age
  scaled, with a missing flag), vs the plain average; fitted on the other folds' out-of-fold rows
  and applied to the held-out fold, so that every row is scored by a model that did not see it.
  It asks whether a second, decision-level use of the metadata (beside the fusion members' own)
  or a learned combination of the classes buys anything.
* ``--versus OTHER``: this bundle vs another bundle of the same member weights and views, built
  another way (e.g. ``skinlesion ensemble build --input-size 144x192`` vs the training size): the
  lever is named by what differs (``input size: 144x192 vs 120x160``), on the validation rows and,
  with ``--test``, on the test split (``--versus-eval-dir``: the other bundle's evaluate folder).

Probabilities are the softmax of the view logits averaged in probability space, without
temperature (argmax and AUC do not depend on a shared temperature). Levers that need another
training (resolution, epochs, backbone) are compared with ``bench/fold_ablation.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

if not __package__:  # run as a file (python bench/levers.py): see bench/_as_package.py
    import _as_package  # noqa: F401

import numpy as np

from bench._cli import BenchError, json_main

FOUR = ("identity", "hflip", "vflip", "rot180")


def _probs(logits: Sequence[np.ndarray], weights: np.ndarray, views: Sequence[int]) -> np.ndarray:
    """Weighted member average of the view-averaged softmax probabilities: ``(N, K)``."""
    from skinlesion.inference.tta import average_views

    per_member = [np.exp(average_views(np.asarray(z)[:, list(views)], "prob")) for z in logits]
    return np.tensordot(weights / weights.sum(), np.stack(per_member), axes=1)


def _compare(variant: np.ndarray, reference: np.ndarray, y: np.ndarray, groups: np.ndarray, fns: dict[str, Any],
             n_boot: int, seed: int) -> dict[str, Any]:
    from skinlesion.metrics.bootstrap import bootstrap_difference_ci

    out: dict[str, Any] = {}
    for name, fn in fns.items():
        d = bootstrap_difference_ci(variant, reference, groups, fn, y_true=y, n_boot=n_boot, seed=seed, name=name)
        out[name] = {"reference": float(fn(y, reference)), "variant": float(fn(y, variant)),
                     "difference": d["estimate"], "ci": [d["low"], d["high"]]}
    return out


def metadata_matrix(frame: Any) -> np.ndarray:
    """Age / 100 (missing: the mean age, and a missing flag), sex and site one-hot (missing: all zero)
    of a dataset table's frame: ``(N, 2 + sexes + sites)``."""
    import pandas as pd

    age = pd.to_numeric(frame["age"], errors="coerce")
    missing = age.isna().to_numpy()
    fill = float(age.mean()) if (~missing).any() else 50.0
    cols = [age.fillna(fill).to_numpy()[:, None] / 100.0, missing[:, None].astype(float)]
    for name in ("sex", "site"):
        values = frame[name].astype("string").fillna("").str.lower().to_numpy()
        kinds = sorted({v for v in values if v and v != "unknown"})
        cols.append(np.stack([values == k for k in kinds], axis=1).astype(float) if kinds else np.zeros((len(values), 0)))
    return np.hstack(cols)


def stacked_probabilities(features: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Cross-fitted ``(N, K)`` probabilities of a class-balanced multinomial logistic regression on
    ``features``: each fold's rows from a model fitted on the other folds' rows (K = ``y.max() + 1``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    k = int(y.max()) + 1
    out = np.zeros((len(y), k))
    for f in np.unique(folds):
        held, fit = folds == f, folds != f
        scale = StandardScaler().fit(features[fit])
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        clf.fit(scale.transform(features[fit]), y[fit])
        out[np.ix_(held, clf.classes_)] = clf.predict_proba(scale.transform(features[held]))
    return out


def _stacking(bundle: Any, full: np.ndarray, y: np.ndarray, groups: np.ndarray, fns: dict[str, Any], where: str,
              data_root: str | None, kw: dict[str, Any]) -> dict[str, Any]:
    """The stacking levers of a cross-fitted bundle (see the module docstring)."""
    from skinlesion.ensemble.build import VALIDATION_CACHE, _cache_ids
    from skinlesion.evaluation import load_bundle_split

    with np.load(bundle.path / VALIDATION_CACHE, allow_pickle=False) as z:
        folds = z["fold"]
    ids = _cache_ids(bundle)[0].astype(str)
    frame = load_bundle_split(bundle, "val", data_root).frame.set_index("image_id")
    meta = metadata_matrix(frame.loc[ids].reset_index())
    logp = np.log(np.clip(full, 1e-12, None))
    alone = stacked_probabilities(logp, y, folds)
    with_meta = stacked_probabilities(np.hstack([logp, meta]), y, folds)
    tag = f"{where}, cross-fitted by fold"
    return {
        f"stacking: logistic regression on the log-probabilities vs their average ({tag})": _compare(alone, full, y, groups, fns, **kw),
        f"stacking: logistic regression on the log-probabilities and age, sex, site vs their average ({tag})":
            _compare(with_meta, full, y, groups, fns, **kw),
        f"stacking: age, sex, site added to the logistic regression ({tag})": _compare(with_meta, alone, y, groups, fns, **kw),
    }


def _sizes(bundle: Any) -> str:
    from skinlesion._params import hw_text

    return "/".join(sorted({hw_text(m.input_size) for m in bundle.members}))


def _versus(bundle: Any, other: Any) -> str:
    """What differs between two bundles of the same member weights and views (the lever's name)."""
    mine, theirs = ([m.meta.get("weights_sha256") for m in b.members] for b in (bundle, other))
    if mine != theirs or list(bundle.tta.views) != list(other.tta.views):
        raise BenchError(
            f"--versus {other.path}: its members' weights or TTA views differ from {bundle.path}'s; the lever compares "
            "two bundles of the same members (e.g. built at two input sizes)"
        )
    if _sizes(bundle) != _sizes(other):
        return f"input size: {_sizes(bundle)} vs {_sizes(other)}"
    return f"bundle {bundle.bundle_id[:12]} vs {other.bundle_id[:12]}"


def _test_logits(bundle: Any, table: Any, eval_dir: str | None, batch_size: int) -> list[np.ndarray]:
    """Every member's test view logits: from ``skinlesion evaluate``'s folder when given, else computed."""
    if eval_dir:
        from skinlesion.ensemble.build import SPLIT_LOGITS, load_split_logits

        return load_split_logits(f"{eval_dir}/{SPLIT_LOGITS}", bundle, table.frame["image_id"].astype(str).tolist())
    from skinlesion.ensemble.predict import member_view_logits

    return [member_view_logits(m, table, list(bundle.tta.views), batch_size=batch_size) for m in bundle.members]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.fold_ablation import _metric_fns
    from skinlesion.ensemble.build import _cache_ids, load_validation_cache, validation_logits_without_metadata
    from skinlesion.ensemble.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    classes = list(bundle.classes)
    fns = _metric_fns(classes, classes.index("MEL"))
    views = list(bundle.tta.views)
    w = np.asarray([m.weight for m in bundle.members], dtype=np.float64)
    logits, _, _ = load_validation_cache(bundle)
    _, groups, y = _cache_ids(bundle)
    all_views = range(len(views))
    kw = {"n_boot": args.n_boot, "seed": args.seed}
    where = "validation, out-of-fold" if bundle.member_folds else "validation"
    full = _probs(logits, w, all_views)
    result: dict[str, Any] = {
        "bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "views": views, "n_boot": args.n_boot,
        "validation": {"rows": where, "n_images": int(len(y)), "n_lesions": int(len(set(groups.tolist())))},
        "levers": {},
    }
    lv = result["levers"]
    if "identity" in views and len(views) > 1:
        ident = _probs(logits, w, [views.index("identity")])
        lv[f"tta: {len(views)} views vs identity ({where})"] = _compare(full, ident, y, groups, fns, **kw)
        if set(FOUR) <= set(views) and len(views) > len(FOUR):
            four = _probs(logits, w, [views.index(v) for v in FOUR])
            lv[f"tta: {len(views)} views vs 4 ({'+'.join(FOUR)}) ({where})"] = _compare(full, four, y, groups, fns, **kw)
    if bundle.fusion_members:
        hidden = _probs(validation_logits_without_metadata(bundle, logits, data_root=args.data_root), w, all_views)
        lv[f"metadata: given vs hidden ({where})"] = _compare(full, hidden, y, groups, fns, **kw)
    if bundle.member_folds and not args.no_stacking:
        lv.update(_stacking(bundle, full, y, groups, fns, where, args.data_root, kw))
    other = load_bundle(args.versus) if args.versus else None
    if other is not None:
        name = _versus(bundle, other)
        ologits, _, _ = load_validation_cache(other)
        oids, _, _ = _cache_ids(other)
        ids = _cache_ids(bundle)[0]
        if sorted(oids.tolist()) != sorted(ids.tolist()):
            raise BenchError(f"--versus {other.path}: its validation rows are not this bundle's ({len(oids)} vs {len(ids)} images)")
        order = {v: i for i, v in enumerate(oids.tolist())}
        rows = np.asarray([order[v] for v in ids.tolist()])
        ow = np.asarray([m.weight for m in other.members], dtype=np.float64)
        lv[f"{name} ({where})"] = _compare(full, _probs([z[rows] for z in ologits], ow, all_views), y, groups, fns, **kw)
    if args.test:
        from skinlesion.data.splits import group_ids
        from skinlesion.evaluation import load_bundle_split

        table = load_bundle_split(bundle, "test", args.data_root)
        tl = _test_logits(bundle, table, args.eval_dir, args.batch_size)
        ty, tg = table.labels(), group_ids(table).to_numpy()
        ens = _probs(tl, w, all_views)
        result["test"] = {"n_images": int(len(ty)), "n_lesions": int(len(set(tg.tolist())))}
        for i, m in enumerate(bundle.members):
            single = _probs([tl[i]], np.ones(1), all_views)
            lv[f"ensemble: {len(bundle.members)} members vs {m.name} alone (test)"] = _compare(ens, single, ty, tg, fns, **kw)
        if other is not None:
            oens = _probs(_test_logits(other, table, args.versus_eval_dir, args.batch_size), ow, all_views)
            lv[f"{name} (test)"] = _compare(ens, oens, ty, tg, fns, **kw)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="Decision bundle folder.")
    ap.add_argument("--test", action="store_true", help="Also the ensemble lever on the test split (runs every member on it).")
    ap.add_argument("--eval-dir", default=None, help="`skinlesion evaluate`'s folder for this bundle's test split: reuse its view logits.")
    ap.add_argument("--versus", default=None, help="Another bundle of the same members (e.g. built at another --input-size).")
    ap.add_argument("--versus-eval-dir", default=None, help="`skinlesion evaluate`'s folder for the --versus bundle's test split.")
    ap.add_argument("--no-stacking", action="store_true", help="Leave out the stacking levers (they read the validation images' metadata).")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads.")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("levers.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
