"""Fit the review flag of a decision bundle on validation: MC-dropout uncertainty over a split.

Selective classification (Geifman & El-Yaniv, NeurIPS 2017) with AURC / E-AURC (Geifman et al.,
ICLR 2019): :func:`fit_review_flag` fits a :class:`~skinlesion.uncertainty.review.ReviewFlagger`
threshold on the MC-dropout outputs (:func:`uncertainty_over_split`, scored by
:func:`~skinlesion.uncertainty.mc_predict.bundle_mc_predict`) of the bundle's validation split
**only**, reports its effect on the test split, and records it in ``bundle.json`` under ``review``,
so that predict/serve can flag cases
(:func:`~skinlesion.uncertainty.mc_predict.review_flag_from_bundle`). A bundle with a
without-metadata operating point also gets a threshold fitted with the metadata hidden
(``review.without_metadata``; see :mod:`skinlesion.uncertainty.mc_predict`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion._params import positive_int
from skinlesion.data.splits import group_ids
from skinlesion.ensemble.bundle import MANIFEST, WITH_METADATA, WITHOUT_METADATA
from skinlesion.metrics.classification import balanced_accuracy, to_jsonable
from skinlesion.metrics.risk_coverage import aurc, optimal_aurc, risk_coverage_curve
from skinlesion.uncertainty.mc_dropout import NotStochasticWarning
from skinlesion.uncertainty.mc_predict import as_bundle, bundle_mc_predict, review_fingerprint
from skinlesion.uncertainty.review import (
    ARRAYS,
    CONFIDENCE_SCORES,
    UNCERTAINTY_SCORES,
    ReviewFlagger,
)

log = logging.getLogger(__name__)

#: Scores compared by risk-coverage (the probabilities: higher = more confident; the others: less).
SCORES: tuple[str, ...] = ("max_prob", "decision_prob", "predictive_entropy", "mutual_information", "expected_entropy")
COVERAGES: tuple[float, ...] = (0.5, 0.8, 0.9, 1.0)
REVIEW_SCORES: tuple[str, ...] = UNCERTAINTY_SCORES + CONFIDENCE_SCORES


def table_records(table: Any, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Metadata records (age, sex, site; missing values left out) of table rows, for fusion members."""
    import pandas as pd

    cols = [c for c in ("age", "sex", "site") if c in table.frame.columns]
    out = []
    for i in rows:
        row = table.frame.iloc[int(i)]
        out.append({c: row[c] for c in cols if not pd.isna(row[c])})
    return out


def uncertainty_over_split(
    bundle: Any,
    split: str = "test",
    n_samples: int = 20,
    batch_size: int = 32,
    max_images: int | None = None,
    seed: int = 0,
    *,
    include_backbone: bool = True,
    data_root: str | None = None,
    device: str | None = None,
    hide_metadata: bool = False,
) -> dict[str, Any]:
    """MC-dropout outputs for the images of a split, in batches of ``batch_size`` images.

    ``hide_metadata``: fusion members get no metadata (every image is scored as one given without it).

    ``max_images`` keeps a seeded random subset (in table order); batch ``b`` is sampled with
    seed ``seed + b``. ``device``: where the members run (default: CUDA when available). Returns
    arrays ``mean_probs`` ``(N, K)``, ``predictive_entropy``, ``expected_entropy``,
    ``mutual_information``, ``predicted_class_variance``, ``max_prob``, ``prediction``, ``y``,
    ``correct`` ``(N,)``,
    ``groups`` (lesion ids) and ``image_ids``, plus ``stochastic`` (False: no dropout was active,
    warned once), ``n_samples``, ``include_backbone``, ``split`` and ``seconds``.
    """
    from skinlesion.ensemble.predict import default_device
    from skinlesion.evaluation import load_bundle_split

    started = time.perf_counter()
    bundle = as_bundle(bundle)
    dev = default_device(device)
    for m in bundle.members:
        m.model.to(dev)
    positive_int("n_samples", n_samples)
    positive_int("batch_size", batch_size)
    positive_int("max_images", max_images, allow_none=True)
    table = load_bundle_split(bundle, split, data_root)
    rows = np.arange(len(table))
    if max_images is not None and max_images < rows.size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_images, replace=False))
    # A cross-fitted bundle is scored on validation out-of-fold: each row by the one member that did
    # not train on it (rows grouped by fold, in table order within a fold).
    scorer = {int(r): bundle for r in rows}
    if bundle.member_folds and split == "val":
        from skinlesion.data.splits import folds_of, read_manifest

        fold = folds_of(read_manifest(bundle.path / MANIFEST)[0], table.frame["image_id"].to_numpy()[rows])
        by_fold = {f: bundle.only(name) for name, f in bundle.member_folds.items()}
        rows = rows[np.argsort(fold, kind="stable")]
        fold = np.sort(fold, kind="stable")
        scorer = {int(r): by_fold[int(f)] for r, f in zip(rows, fold, strict=True)}
    batches = []
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        cut = [i for i in range(1, len(chunk)) if scorer[int(chunk[i])] is not scorer[int(chunk[i - 1])]]
        batches += np.split(chunk, cut)  # one scorer per batch
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
    stochastic = False
    for b, batch in enumerate(batches):
        images = [table.load_image(int(i)) for i in batch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotStochasticWarning)
            res = bundle_mc_predict(
                scorer[int(batch[0])], images, n_samples=n_samples, include_backbone=include_backbone, seed=seed + b,
                # fusion members see what they see in evaluate/predict (or nothing: hide_metadata)
                metadata=None if hide_metadata else table_records(table, batch),
            )
        stochastic = stochastic or res.stochastic
        for k in ARRAYS:
            parts[k].append(np.asarray(getattr(res, k)))
    if not stochastic:
        warnings.warn(
            f"MC dropout on {split}: no member had an active dropout layer that changed an output; the "
            "mutual information only measures the disagreement between members.",
            NotStochasticWarning,
            stacklevel=2,
        )
    out: dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items()}
    y = table.labels()[rows]
    out["prediction"] = out["mean_probs"].argmax(axis=1)
    out["y"] = y
    out["correct"] = out["prediction"] == y
    out["groups"] = group_ids(table).to_numpy()[rows]
    out["image_ids"] = table.frame["image_id"].astype(str).to_numpy()[rows]
    out.update(
        stochastic=bool(stochastic), n_samples=int(n_samples), include_backbone=bool(include_backbone), split=split,
        metadata_hidden=bool(hide_metadata), seconds=round(time.perf_counter() - started, 2),
    )
    log.info("MC dropout on %s%s: %d images x %d passes in %.1f s", split, " (metadata hidden)" if hide_metadata else "",
             rows.size, n_samples, out["seconds"])
    return out


def with_decisions(bundle: Any, out: dict[str, Any], operating_point: str = WITH_METADATA) -> dict[str, Any]:
    """``out`` judged by what the clinician is shown: ``prediction`` becomes the bundle's decision under
    its policy (the diagnosis rule may pick a class other than the most probable one) on the bundle's
    calibrated probabilities (``out["probs"]``, as predict decides; MC-dropout outputs have none: their
    mean probabilities), ``correct`` its correctness, ``decision_prob`` the probability of the decided
    class in those probabilities (what a record shows and its review reads), and ``argmax`` the most
    probable class in them."""
    probs = out.get("probs", out["mean_probs"])
    decision = bundle.policy_decisions(probs, operating_point=operating_point)
    return {
        **out, "argmax": probs.argmax(axis=1), "prediction": decision, "correct": decision == out["y"],
        "decision_prob": probs[np.arange(decision.size), decision], "decided_by": bundle.policy,
    }


def _risk_at(coverage: np.ndarray, risk: np.ndarray, c: float) -> float:
    """Selective risk at the smallest coverage >= ``c`` that ties allow."""
    return float(risk[int(np.flatnonzero(coverage >= c - 1e-12)[0])])


def risk_coverage_report(outputs: dict[str, Any], scores: Sequence[str] = SCORES) -> dict[str, dict[str, Any]]:
    """AURC, E-AURC, optimal AURC and risk at :data:`COVERAGES` for each score (Geifman et al. 2019)."""
    correct = outputs["correct"]
    best = optimal_aurc(correct)
    report = {}
    for s in scores:
        confident = s in CONFIDENCE_SCORES
        area = aurc(outputs[s], correct, higher_is_confident=confident)
        cov, risk, _ = risk_coverage_curve(outputs[s], correct, higher_is_confident=confident)
        report[s] = {
            "aurc": area,
            "e_aurc": area - best,
            "optimal_aurc": best,
            "risk_at_coverage": {f"{c:g}": _risk_at(cov, risk, c) for c in COVERAGES},
        }
    return report


def _split_effect(flagger: ReviewFlagger, out: dict[str, Any], k: int) -> dict[str, Any]:
    """The flagger's effect on one split, with BACC overall, on unflagged and on flagged cases."""
    scores = out[flagger.score]
    res: dict[str, Any] = flagger.evaluate(scores, out["correct"])
    flagged = flagger.flag(scores)

    def bacc(mask: np.ndarray) -> float:
        return balanced_accuracy(out["y"][mask], out["prediction"][mask], k) if mask.any() else float("nan")

    res.update(
        bacc=bacc(np.ones_like(flagged)), bacc_unflagged=bacc(~flagged), bacc_flagged=bacc(flagged),
        n_lesions=int(len(set(out["groups"]))), stochastic=out["stochastic"],
        risk_coverage=risk_coverage_report(out),
    )
    return res


def _fit_point(
    flagger: ReviewFlagger, val: dict[str, Any], test: dict[str, Any] | None, k: int
) -> dict[str, Any]:
    """Fit ``flagger`` on validation MC outputs; its threshold and effect on validation (and test)."""
    flagger.fit(val[flagger.score], val["correct"])
    threshold = float(flagger.threshold_)
    out: dict[str, Any] = {
        "threshold": threshold if np.isfinite(threshold) else None,
        "validation": {
            "in_sample": True,
            "flagged_fraction": flagger.flagged_fraction_,
            "errors_removed": flagger.errors_removed_,
            "selective_risk": flagger.selective_risk_,
            **_split_effect(flagger, val, k),
        },
    }
    if test is not None:
        out["test"] = _split_effect(flagger, test, k)
    return out


def fit_review_flag(
    bundle_path: str | Path,
    n_samples: int = 20,
    score: str = "mutual_information",
    goal: str = "error_fraction",
    target: float = 0.5,
    seed: int = 0,
    data_root: str | None = None,
    *,
    include_backbone: bool = True,
    batch_size: int = 32,
    persist: bool = True,
    device: str | None = None,
    test: bool = True,
    method: str = "mc_dropout",
) -> dict[str, Any]:
    """Fit the review threshold on the bundle's validation split; report it on test; save it.

    ``score="auto"``: the score of :data:`SCORES` with the lowest validation AURC (recorded in
    ``review.score_selection``). ``method``: ``"mc_dropout"`` scores a case by ``n_samples`` MC-dropout passes; ``"ensemble"`` by
    the members x TTA views the prediction already computes
    (:mod:`~skinlesion.uncertainty.ensemble_samples`: no extra passes, read from the validation
    cache; ``n_samples``, ``include_backbone`` and ``seed`` do not apply and are recorded as None).

    ``bundle_path`` may also be a checkpoint (a one-member bundle): then nothing is saved.

    Correct = the bundle's decision (its policy: the diagnosis rule or the priority-threshold rule, on
    the bundle's calibrated probabilities; MC-dropout outputs: on their mean probabilities) equals the
    label: the flag is fitted on the errors a clinician would see (:func:`with_decisions`). The threshold comes from
    validation only (Geifman & El-Yaniv 2017); test numbers are reported, never used to fit. With
    ``persist``, ``bundle.json`` gets ``review`` = ``{score, goal, target, threshold (None: flags
    nothing), flag_when, n_samples, include_backbone, seed, fitted_on: "val", fitted_for,
    validation, test}`` and a ``history`` entry. Returns that dict plus ``seconds``.

    A bundle with a without-metadata operating point (``decision.without_metadata``) also gets
    ``review.without_metadata`` = ``{threshold, fitted_on: "val, metadata hidden", fitted_for,
    validation, test}``: the same score and goal, fitted on validation MC outputs computed with the
    metadata hidden and that point's temperatures; predict/serve flag such images with it.
    ``test=False`` skips the test passes (a report only; nothing fitted depends on them).
    """
    from skinlesion.ensemble.bundle import (
        bundle_from_checkpoint,
        is_bundle,
        load_bundle,
        write_meta,
    )

    from skinlesion.uncertainty import ensemble_samples as es

    started = time.perf_counter()
    if method not in es.METHODS:
        raise ValueError(f"The 'method' parameter must be one of {list(es.METHODS)}. Got {method!r} instead.")
    auto = score == "auto"
    flagger = ReviewFlagger("max_prob" if auto else score, goal, target)
    flagger._check_params()  # fail on a bad score/goal/target before minutes of MC sampling
    if is_bundle(bundle_path):
        bundle = load_bundle(bundle_path)
    else:  # a checkpoint: report only, there is no bundle.json to store the flag in
        bundle = bundle_from_checkpoint(bundle_path)
        persist = False
    k = len(bundle.classes)
    kw = {"n_samples": n_samples, "batch_size": batch_size, "seed": seed, "include_backbone": include_backbone,
          "data_root": data_root, "device": device}
    ensemble = method == es.ENSEMBLE

    def outputs(split: str, hide_metadata: bool = False) -> dict[str, Any]:
        if not ensemble:
            out = uncertainty_over_split(bundle, split, **kw, hide_metadata=hide_metadata)
        elif split == "val":
            out = es.cache_outputs(bundle, hide_metadata=hide_metadata, data_root=data_root)
        else:
            out = es.split_outputs(bundle, split, hide_metadata=hide_metadata, data_root=data_root, batch_size=batch_size)
        point = WITHOUT_METADATA if hide_metadata and bundle.without_metadata is not None else WITH_METADATA
        return with_decisions(bundle, out, point)

    val = outputs("val")
    selection = None
    if auto:  # the score whose ranking of validation errors is best (lowest AURC)
        areas = {s: v["aurc"] for s, v in risk_coverage_report(val).items()}
        score = min(areas, key=areas.__getitem__)
        flagger = ReviewFlagger(score, goal, target)
        selection = {"rule": "lowest AURC on the validation rows the threshold is fitted on", "aurc": areas, "chosen": score}
    main = _fit_point(flagger, val, outputs("test") if test else None, k)
    review: dict[str, Any] = {
        "method": method,
        "score": score,
        "goal": goal,
        "target": float(target),
        "threshold": main.pop("threshold"),
        "flag_when": "score <= threshold" if score in CONFIDENCE_SCORES else "score >= threshold",
        "n_samples": None if ensemble else int(n_samples),
        "include_backbone": None if ensemble else bool(include_backbone),
        "seed": None if ensemble else int(seed),
        "fitted_on": "val, out-of-fold" if bundle.member_folds else "val",
        **({"score_selection": selection} if selection else {}),
        "fitted_for": review_fingerprint(bundle.spec, score=score),
        "errors_of": f"the bundle's decision (policy {bundle.policy!r})",
        **main,
    }
    if bundle.without_metadata is not None and bundle.fusion_members:
        point = _fit_point(
            ReviewFlagger(score, goal, target), outputs("val", hide_metadata=True), outputs("test", hide_metadata=True) if test else None, k,
        )
        review["without_metadata"] = {
            "threshold": point.pop("threshold"),
            "fitted_on": "val, metadata hidden",
            "fitted_for": review_fingerprint(bundle.spec, WITHOUT_METADATA, score),
            **point,
        }
    review["fitted"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    review = to_jsonable(review)
    if persist:
        meta = dict(bundle.meta)
        meta["review"] = review
        # the id bundle.json had before: results measured on it stay valid for all the review does not touch
        meta["history"] = [*meta.get("history", []), {"at": review["fitted"], "action": "review", "method": method,
                                                      "score": score, "goal": goal, "target": float(target),
                                                      "previous_bundle_id": bundle.bundle_id}]
        write_meta(bundle.path, meta)
    return {**review, "bundle": str(bundle.path or bundle.spec.provenance.checkpoint), "persisted": bool(persist),
            "seconds": round(time.perf_counter() - started, 2)}


__all__ = [
    "COVERAGES",
    "SCORES",
    "fit_review_flag",
    "risk_coverage_report",
    "uncertainty_over_split",
    "with_decisions",
]
