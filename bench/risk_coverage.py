"""Risk-coverage of review scores and a review flag fitted on validation; prints one JSON object.

    python bench/risk_coverage.py runs/some-bundle --n-samples 20
    python bench/risk_coverage.py runs/some-bundle --score max_prob --goal coverage --target 0.2 --write
    python bench/risk_coverage.py runs/some-bundle --compare --n-samples 10 --ood     # which score to flag by

``--compare`` (:func:`skinlesion.uncertainty.review_compare.compare_scores`): on the validation
rows (out-of-fold for a cross-fitted bundle: one member per row, so members cannot disagree there)
and on the test split (the K-member average), paired on the same images, with lesion-bootstrap
intervals: AURC, E-AURC and the errors caught when ``--rate`` of cases are reviewed, for the
maximum probability, predictive entropy and mutual information over members x TTA views (no
extra pass), the members' disagreement alone (mutual information of the members' TTA-averaged
probabilities), MC-dropout mutual information and predictive entropy (``--n-samples`` passes; 0
skips), the out-of-distribution gate's score (``--ood``) and the probability of the decided class
(``decision_prob``). Every score ranks the same decision, the one a clinician is shown: the bundle's
policy (its diagnosis rule, which may pick a class other than the most probable one) on the members x
views mean. Also writes the risk-coverage curves (``--curves CSV``).

MC dropout (Gal & Ghahramani 2016) over the bundle's members on its validation and test splits;
AURC, E-AURC and optimal AURC (Geifman et al. 2019) and the selective risk at coverage
0.5/0.8/0.9/1.0 for max_prob, decision_prob, predictive entropy, mutual information and expected entropy; the
ReviewFlagger threshold fitted on validation only and its effect on test. bundle.json is changed
only with ``--write``. See ``skinlesion.uncertainty.review_fit.fit_review_flag``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

if not __package__:  # run as a file (python bench/risk_coverage.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

from skinlesion.uncertainty.review import CONFIDENCE_SCORES
from skinlesion.uncertainty.review_fit import fit_review_flag, with_decisions


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
    ap.add_argument("--method", default="mc_dropout", help="mc_dropout or ensemble (members x TTA views) for the fitted flag.")
    ap.add_argument("--compare", action="store_true", help="Compare review scores (see the module doc) instead of fitting.")
    ap.add_argument("--rate", type=float, default=0.2, help="Review rate for 'errors caught' (--compare).")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--eval-dir", default=None, help="`skinlesion evaluate`'s folder for this bundle's test split: reuse its view logits.")
    ap.add_argument("--ood", action="store_true", help="Also the out-of-distribution gate's score (--compare; test only).")
    ap.add_argument("--max-images", type=int, default=None, help="A seeded subset of test images (--compare).")
    ap.add_argument("--curves", default=None, help="Write test risk-coverage curves as CSV (--compare).")
    ap.add_argument("--plot", default=None, help="Draw the test risk-coverage curves as a PNG (--compare).")
    ap.add_argument("--threads", type=int, default=None, help="torch threads.")
    return ap.parse_args(argv)


def _member_disagreement(bundle, logits, points) -> np.ndarray:
    """Mutual information between the members' TTA-averaged probabilities."""
    from skinlesion.uncertainty.ensemble_samples import view_samples
    from skinlesion.uncertainty.mc_dropout import MCResult

    res = view_samples(bundle, logits, points)
    m, v = len(bundle.members), len(bundle.tta.views)
    per_member = res.samples.reshape(m, v, *res.samples.shape[1:]).mean(axis=1)
    w = res.sample_weights.reshape(m, v).sum(axis=1)
    return MCResult.from_samples(per_member, w).mutual_information


def compare(args: argparse.Namespace) -> dict:
    from skinlesion.data.splits import group_ids
    from skinlesion.ensemble.bundle import WITH_METADATA, load_bundle
    from skinlesion.ensemble.predict import member_view_logits
    from skinlesion.evaluation import load_bundle_split
    from skinlesion.uncertainty.ensemble_samples import cache_outputs, outputs_from_samples, view_samples
    from skinlesion.uncertainty.review_compare import compare_scores
    from skinlesion.uncertainty.review_fit import uncertainty_over_split

    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    kw = {"rate": args.rate, "n_boot": args.n_boot, "higher_is_confident": CONFIDENCE_SCORES}
    val = with_decisions(bundle, cache_outputs(bundle, data_root=args.data_root))
    result: dict = {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members),
                    "views": list(bundle.tta.views), "out_of_fold_validation": bool(bundle.member_folds),
                    "errors_of": f"the bundle's decision (policy {bundle.policy!r})"}
    val_scores = {"max_prob": val["max_prob"], "decision_prob": val["decision_prob"], "predictive_entropy": val["predictive_entropy"],
                  "views_mutual_information": val["mutual_information"]}
    if not bundle.member_folds:
        val_scores["members_x_views_mutual_information"] = val_scores.pop("views_mutual_information")
    result["validation"] = compare_scores(val_scores, val["correct"], val["groups"], **kw)

    table = load_bundle_split(bundle, "test", args.data_root)
    if args.max_images is not None and args.max_images < len(table):
        keep = np.zeros(len(table), dtype=bool)
        keep[np.random.default_rng(args.seed).choice(np.arange(len(table)), size=args.max_images, replace=False)] = True
        table = table.subset(keep)  # the rows uncertainty_over_split(max_images=...) draws with the same seed
    t0 = time.perf_counter()
    if args.eval_dir:  # the logits `skinlesion evaluate` saved for this bundle and split
        from skinlesion.ensemble.build import SPLIT_LOGITS, load_split_logits

        logits = load_split_logits(f"{args.eval_dir}/{SPLIT_LOGITS}", bundle, table.frame["image_id"].astype(str).tolist())
    else:
        logits = [member_view_logits(m, table, bundle.tta.views, batch_size=args.batch_size) for m in bundle.members]
    points = np.full(len(table), WITH_METADATA)
    ids = table.frame["image_id"].astype(str).to_numpy()
    test = with_decisions(bundle, outputs_from_samples(
        view_samples(bundle, logits, points), table.labels(), group_ids(table).to_numpy(), ids,
        probs=np.exp(bundle.log_probs(logits)), split="test"))
    seconds = {"members_x_views": round(time.perf_counter() - t0, 1)}
    scores = {
        "max_prob": test["max_prob"], "decision_prob": test["decision_prob"], "predictive_entropy": test["predictive_entropy"],
        "members_x_views_mutual_information": test["mutual_information"],
        "members_mutual_information": _member_disagreement(bundle, logits, points),
    }
    if args.n_samples > 0:
        t0 = time.perf_counter()
        mc = uncertainty_over_split(bundle, "test", n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed,
                                    data_root=args.data_root, include_backbone=not args.head_only, max_images=args.max_images)
        pos = {i: k for k, i in enumerate(mc["image_ids"])}
        order = np.asarray([pos[i] for i in ids])
        scores["mc_dropout_mutual_information"] = mc["mutual_information"][order]
        scores["mc_dropout_predictive_entropy"] = mc["predictive_entropy"][order]
        seconds["mc_dropout"] = round(time.perf_counter() - t0, 1)
    if args.ood:
        from skinlesion.ood.features import image_features
        from skinlesion.ood.gate import bundle_gate

        gate = bundle_gate(bundle)
        if gate is None:
            raise BenchError(f"{bundle.path}: the bundle has no out-of-distribution gate (run skinlesion calibrate --ood)")
        t0 = time.perf_counter()
        used = [m for m in bundle.members if m.name in gate.members_]
        ood = []
        for start in range(0, len(table), args.batch_size):
            images = [table.load_image(i) for i in range(start, min(start + args.batch_size, len(table)))]
            ood.append(gate.score(image_features(used, images)))
        scores["ood_score"] = np.concatenate(ood)
        seconds["ood"] = round(time.perf_counter() - t0, 1)
    result["test"] = compare_scores(scores, test["correct"], test["groups"], **kw)
    result["test"]["seconds"] = seconds
    if args.curves:
        _write_curves(args.curves, scores, test["correct"])
        result["curves"] = args.curves
    if args.plot:
        _plot(args.plot, scores, test["correct"], result["test"])
        result["plot"] = args.plot
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _write_curves(path: str, scores: dict, correct: np.ndarray) -> None:
    import csv

    from skinlesion.metrics.risk_coverage import risk_coverage_curve

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["score", "coverage", "risk"])
        for name, s in scores.items():
            cov, risk, _ = risk_coverage_curve(s, correct, higher_is_confident=name in CONFIDENCE_SCORES)
            for c, r in zip(cov.tolist(), risk.tolist(), strict=True):
                w.writerow([name, f"{c:.5f}", f"{r:.5f}"])


def _plot(path: str, scores: dict, correct: np.ndarray, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skinlesion.metrics.risk_coverage import risk_coverage_curve

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for name, s in scores.items():
        cov, risk, _ = risk_coverage_curve(s, correct, higher_is_confident=name in CONFIDENCE_SCORES)
        ax.plot(cov, risk, label=f"{name} (AURC {summary['scores'][name]['aurc']:.3f})", lw=1.4)
    ax.axhline(1 - float(np.mean(correct)), color="grey", ls=":", lw=1, label="no review")
    ax.set_xlabel("coverage (fraction of cases not sent to review)")
    ax.set_ylabel("error rate of the cases kept")
    ax.set_title(f"Risk-coverage on test ({summary['n']} images, {summary['n_lesions']} lesions)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    if args.compare:
        return compare(args)
    return fit_review_flag(
        args.bundle, n_samples=args.n_samples, score=args.score, goal=args.goal, target=args.target, seed=args.seed,
        data_root=args.data_root, include_backbone=not args.head_only, batch_size=args.batch_size,
        persist=args.write, device=args.device, method=args.method,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("risk_coverage.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
