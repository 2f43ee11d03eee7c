"""MC-dropout uncertainty of a decision bundle over a split, and a review flag fitted on validation.

* MC dropout over the ensemble (Gal & Ghahramani, ICML 2016; mixture of members,
  Lakshminarayanan et al. 2017), entropy decomposition (Depeweg et al., ICML 2018):
  :func:`bundle_mc_predict`, :func:`uncertainty_over_split`.
* Selective classification (Geifman & El-Yaniv, NeurIPS 2017) with AURC / E-AURC (Geifman et al.,
  ICLR 2019): :func:`fit_review_flag` fits a :class:`~skinlesion.uncertainty.review.ReviewFlagger`
  threshold on the bundle's validation split **only**, reports its effect on the test split, and
  records it in ``bundle.json`` under ``review`` so that predict/serve can flag cases
  (:func:`review_flag_from_bundle`).

Temperatures follow the bundle: member temperatures in mode ``member``; in mode ``ensemble`` the
ensemble temperature divides every member's logits in every pass (the bundle itself applies it
after mixing; for ranking cases by uncertainty the difference is immaterial, and fitting and
flagging use the same scores).

Operating points: an image whose fusion members receive no metadata is scored with the temperatures
of the bundle's without-metadata operating point (``decision.without_metadata``), as its decision
is, and flagged by a review threshold fitted on validation **with the metadata hidden**
(``review.without_metadata``); the main threshold was fitted with metadata, on other scores.
"""

from __future__ import annotations

import dataclasses
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
from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA
from skinlesion.metrics.classification import balanced_accuracy, to_jsonable
from skinlesion.metrics.risk_coverage import aurc, optimal_aurc, risk_coverage_curve
from skinlesion.uncertainty.mc_dropout import (
    MCResult,
    NotStochasticWarning,
    ensemble_mc_predict,
)
from skinlesion.uncertainty.review import (
    CONFIDENCE_SCORES,
    UNCERTAINTY_SCORES,
    ReviewFlagger,
)

log = logging.getLogger(__name__)

#: Scores compared by risk-coverage (``max_prob``: higher = more confident; the others: less).
SCORES: tuple[str, ...] = ("max_prob", "predictive_entropy", "mutual_information", "expected_entropy")
COVERAGES: tuple[float, ...] = (0.5, 0.8, 0.9, 1.0)
REVIEW_SCORES: tuple[str, ...] = UNCERTAINTY_SCORES + CONFIDENCE_SCORES
ARRAYS: tuple[str, ...] = (
    "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information", "predicted_class_variance", "max_prob"
)


def _load(bundle: Any) -> Any:
    from skinlesion.ensemble.bundle import Bundle, load_bundle

    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def _tempered_members(bundle: Any, operating_point: str = WITH_METADATA) -> list[Any]:
    """The members with the temperature each MC pass divides their logits by, at ``operating_point``."""
    temps = bundle.temperatures_for(operating_point)
    mode = temps["mode"]
    out = []
    for m in bundle.members:
        t = temps["members"][m.name] if mode == "member" else temps["ensemble"] if mode == "ensemble" else 1.0
        out.append(dataclasses.replace(m, temperature=float(t)))
    return out


def mc_operating_points(bundle: Any, metadata: Sequence[dict[str, Any] | None] | None, n: int) -> np.ndarray:
    """Per image ``(n,)`` the operating point whose temperatures score it (the one that decides it)."""
    return bundle.operating_points(bundle.metadata_given(metadata, n))


def table_records(table: Any, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Metadata records (age, sex, site; missing values left out) of table rows, for fusion members."""
    import pandas as pd

    cols = [c for c in ("age", "sex", "site") if c in table.frame.columns]
    out = []
    for i in rows:
        row = table.frame.iloc[int(i)]
        out.append({c: row[c] for c in cols if not pd.isna(row[c])})
    return out


def bundle_mc_predict(
    bundle: Any,
    images: Sequence[np.ndarray],
    *,
    n_samples: int = 20,
    include_backbone: bool = True,
    seed: int | None = None,
    chunk: int | None = 32,  # rows per forward pass: 32 ran 1.6x faster than 256 on the 2-core CPU
    metadata: Sequence[dict[str, Any] | None] | None = None,
) -> MCResult:
    """MC dropout of the bundle's members on RGB uint8 images, with the bundle's weights and
    temperatures (see the module doc). What predict/serve call to score a case for review.
    ``metadata``: one record per image for metadata fusion members (see ``ensemble_mc_predict``).
    Images without metadata get the without-metadata point's temperatures (:func:`mc_operating_points`);
    a batch mixing both is run as two groups (each seeded with ``seed``) and put back in order."""
    n = len(images)
    points = mc_operating_points(bundle, metadata, n)
    kw = {"n_samples": n_samples, "include_backbone": include_backbone, "seed": seed, "chunk": chunk}
    parts = []
    for point in np.unique(points) if n else [WITH_METADATA]:  # one group unless the batch mixes both
        rows = np.flatnonzero(points == point)
        parts.append((rows, ensemble_mc_predict(
            _tempered_members(bundle, str(point)), [images[i] for i in rows],
            metadata=[metadata[i] for i in rows] if metadata is not None else None, **kw,
        )))
    if len(parts) == 1:
        return parts[0][1]
    samples = np.empty((parts[0][1].samples.shape[0], n, parts[0][1].samples.shape[2]))
    for rows, res in parts:
        samples[:, rows] = res.samples
    return MCResult.from_samples(
        samples, parts[0][1].sample_weights, stochastic=any(r.stochastic for _, r in parts),
        stochastic_layers=parts[0][1].stochastic_layers,
    )


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
    from skinlesion.ensemble.evaluate import load_bundle_split

    started = time.perf_counter()
    bundle = _load(bundle)
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
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ARRAYS}
    stochastic = False
    for b, start in enumerate(range(0, rows.size, batch_size)):
        batch = rows[start : start + batch_size]
        images = [table.load_image(int(i)) for i in batch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotStochasticWarning)
            res = bundle_mc_predict(
                bundle, images, n_samples=n_samples, include_backbone=include_backbone, seed=seed + b,
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


def _fingerprint(meta: dict[str, Any], operating_point: str = WITH_METADATA) -> dict[str, Any]:
    """What the review threshold depends on: member weights files, weights and temperatures (of the
    without-metadata point too, for its threshold)."""
    out = {
        "members": [[m["name"], m["weights_sha256"], float(m["weight"]), float(m["temperature"])] for m in meta["members"]],
        "temperature": {k: meta["temperature"].get(k) for k in ("mode", "ensemble")},
    }
    if operating_point == WITHOUT_METADATA:
        out["without_metadata_temperature"] = (meta["decision"].get("without_metadata") or {}).get("temperature")
    return out


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
) -> dict[str, Any]:
    """Fit the review threshold on the bundle's validation split; report it on test; save it.

    ``bundle_path`` may also be a checkpoint (a one-member bundle): then nothing is saved.

    Correct = the argmax of the MC mean probabilities equals the label. The threshold comes from
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

    started = time.perf_counter()
    flagger = ReviewFlagger(score, goal, target)
    flagger._check_params()  # fail on a bad score/goal/target before minutes of MC sampling
    if is_bundle(bundle_path):
        bundle = load_bundle(bundle_path)
    else:  # a checkpoint: report only, there is no bundle.json to store the flag in
        bundle = bundle_from_checkpoint(bundle_path)
        persist = False
    k = len(bundle.classes)
    kw = {"n_samples": n_samples, "batch_size": batch_size, "seed": seed, "include_backbone": include_backbone,
          "data_root": data_root, "device": device}
    main = _fit_point(
        flagger, uncertainty_over_split(bundle, "val", **kw), uncertainty_over_split(bundle, "test", **kw) if test else None, k
    )
    review: dict[str, Any] = {
        "score": score,
        "goal": goal,
        "target": float(target),
        "threshold": main.pop("threshold"),
        "flag_when": "score <= threshold" if score in CONFIDENCE_SCORES else "score >= threshold",
        "n_samples": int(n_samples),
        "include_backbone": bool(include_backbone),
        "seed": int(seed),
        "fitted_on": "val",
        "fitted_for": _fingerprint(bundle.meta),
        **main,
    }
    if bundle.without_metadata is not None and bundle.fusion_members:
        hidden = {**kw, "hide_metadata": True}
        point = _fit_point(
            ReviewFlagger(score, goal, target), uncertainty_over_split(bundle, "val", **hidden),
            uncertainty_over_split(bundle, "test", **hidden) if test else None, k,
        )
        review["without_metadata"] = {
            "threshold": point.pop("threshold"),
            "fitted_on": "val, metadata hidden",
            "fitted_for": _fingerprint(bundle.meta, WITHOUT_METADATA),
            **point,
        }
    review["fitted"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    review = to_jsonable(review)
    if persist:
        meta = dict(bundle.meta)
        meta["review"] = review
        meta["history"] = [*meta.get("history", []), {"at": review["fitted"], "action": "review", "score": score,
                                                      "goal": goal, "target": float(target)}]
        write_meta(bundle.path, meta)
    return {**review, "bundle": str(bundle.path or bundle.meta["provenance"].get("checkpoint")), "persisted": bool(persist),
            "seconds": round(time.perf_counter() - started, 2)}


def review_point(bundle: Any, operating_point: str = WITH_METADATA) -> dict[str, Any] | None:
    """The review record (threshold, validation, fitted_for...) that flags images decided by
    ``operating_point``: ``review`` itself, or ``review.without_metadata``. None: no review fitted."""
    review = _load(bundle).meta.get("review")
    if review is None:
        return None
    if operating_point == WITHOUT_METADATA:
        return {**review, **review.get("without_metadata", {"fitted_for": None})}
    return review


def review_flag_from_bundle(bundle: Any, operating_point: str = WITH_METADATA) -> ReviewFlagger | None:
    """The fitted :class:`ReviewFlagger` recorded in ``bundle.json`` (``review``; with
    ``operating_point=WITHOUT_METADATA``: ``review.without_metadata``), or None if none is.

    Raises BundleError when the record is incomplete or was fitted for other members, weights or
    temperatures, or before the bundle's without-metadata operating point (refit it with
    :func:`fit_review_flag`).
    """
    from skinlesion.ensemble.bundle import BundleError

    bundle = _load(bundle)
    review = review_point(bundle, operating_point)
    if review is None:
        return None
    where = f"{bundle.path}/bundle.json" if bundle.path is not None else "bundle"
    field = "review.without_metadata" if operating_point == WITHOUT_METADATA else "review"
    missing = [f for f in ("score", "goal", "target", "threshold", "fitted_for", "validation") if f not in review]
    if missing:
        raise BundleError(f"{where}: field '{field}' lacks {missing}")
    if review["fitted_for"] != _fingerprint(bundle.meta, operating_point):
        raise BundleError(
            f"{where}: the review threshold ('{field}') was fitted for other members, weights or temperatures than "
            "the bundle now has (or before its without-metadata operating point); refit it (skinlesion explain review BUNDLE)."
        )
    flagger = ReviewFlagger(review["score"], review["goal"], review["target"])
    flagger._check_params()
    thr = review["threshold"]
    flags_low = review["score"] in CONFIDENCE_SCORES
    flagger.threshold_ = float(thr) if thr is not None else (-np.inf if flags_low else np.inf)
    v = review["validation"]
    for attr in ("flagged_fraction", "errors_removed", "selective_risk"):
        value = v.get(attr)
        setattr(flagger, f"{attr}_", float("nan") if value is None else float(value))
    return flagger


__all__ = [
    "COVERAGES",
    "SCORES",
    "bundle_mc_predict",
    "fit_review_flag",
    "mc_operating_points",
    "review_flag_from_bundle",
    "review_point",
    "risk_coverage_report",
    "uncertainty_over_split",
]
