"""MC-dropout uncertainty of a decision bundle at prediction time, and the review flag it is compared with.

MC dropout over the ensemble (Gal & Ghahramani, ICML 2016; mixture of members, Lakshminarayanan et
al. 2017), entropy decomposition (Depeweg et al., ICML 2018): :func:`bundle_mc_predict`, what
predict/serve call to score a case. The review threshold fitted on validation
(:mod:`skinlesion.uncertainty.review_fit`) is read back from ``bundle.json`` by
:func:`review_flag_from_bundle`, refused when it was fitted for other members, weights or temperatures.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion.calibration.decision import DEFAULT_POLICY
from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, Bundle, BundleError, load_bundle
from skinlesion.ensemble.bundle_schema import BundleMeta, ReviewSpec, parse_meta
from skinlesion.uncertainty.mc_dropout import MCResult, ensemble_mc_predict
from skinlesion.uncertainty.review import CONFIDENCE_SCORES, DECISION_SCORES, ReviewFlagger


def as_bundle(bundle: Bundle | str | Path) -> Bundle:
    """``bundle`` itself, or the bundle loaded from the folder it names."""
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
            metadata=[metadata[i] for i in rows] if metadata is not None else None,
            bias=bundle.class_bias(str(point)), **kw,
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


def review_fingerprint(
    spec: BundleMeta | dict[str, Any], operating_point: str = WITH_METADATA, score: str | None = None
) -> dict[str, Any]:
    """What the review threshold depends on: member weights files, weights and temperatures (of the
    without-metadata point too, for its threshold) and, for a score read at the decided class
    (``decision_prob``), the decision rule of that point. ``spec``: ``bundle.spec`` (or bundle.json as a dict)."""
    spec = spec if isinstance(spec, BundleMeta) else parse_meta(spec)
    out: dict[str, Any] = {
        "members": [[m.name, m.weights_sha256, float(m.weight), float(m.temperature)] for m in spec.members],
        "temperature": {"mode": spec.temperature.mode, "ensemble": spec.temperature.ensemble}
        | ({"bias": spec.temperature.bias} if spec.temperature.bias is not None else {}),
    }
    point = spec.decision.without_metadata if operating_point == WITHOUT_METADATA else None
    if operating_point == WITHOUT_METADATA:
        out["without_metadata_temperature"] = None if point is None else point.temperature.model_dump(exclude_unset=True)
    if score in DECISION_SCORES:
        dec = spec.decision
        diagnosis = point.diagnosis if point is not None and point.diagnosis is not None else dec.diagnosis
        thresholds = point.thresholds if point is not None else dec.thresholds
        out["decision"] = {
            "policy": dec.policy or DEFAULT_POLICY,
            "diagnosis_log_weights": None if diagnosis is None else diagnosis.log_weights,
            "thresholds": {c: t.threshold for c, t in thresholds.items()},
            "priority": dec.priority,
            "conflict": dec.conflict,
        }
    return out


def review_point(bundle: Any, operating_point: str = WITH_METADATA) -> ReviewSpec | None:
    """The review record (threshold, validation, fitted_for...) that flags images decided by
    ``operating_point``: ``review`` itself, or with ``review.without_metadata`` over it. None: no review fitted."""
    review = as_bundle(bundle).spec.review
    return None if review is None else review.point(operating_point == WITHOUT_METADATA)


def review_flag_from_bundle(bundle: Any, operating_point: str = WITH_METADATA) -> ReviewFlagger | None:
    """The fitted :class:`ReviewFlagger` recorded in ``bundle.json`` (``review``; with
    ``operating_point=WITHOUT_METADATA``: ``review.without_metadata``), or None if none is.

    Raises BundleError when the record is incomplete or was fitted for other members, weights or
    temperatures, or before the bundle's without-metadata operating point (refit it with
    :func:`~skinlesion.uncertainty.review_fit.fit_review_flag`).
    """
    bundle = as_bundle(bundle)
    review = review_point(bundle, operating_point)
    if review is None:
        return None
    where = f"{bundle.path}/bundle.json" if bundle.path is not None else "bundle"
    field = "review.without_metadata" if operating_point == WITHOUT_METADATA else "review"
    missing = [f for f in ("score", "goal", "target", "threshold", "fitted_for", "validation") if f not in review.model_fields_set]
    if missing:
        raise BundleError(f"{where}: field '{field}' lacks {missing}")
    if review.fitted_for != review_fingerprint(bundle.spec, operating_point, review.score):
        raise BundleError(
            f"{where}: the review threshold ('{field}') was fitted for other members, weights or temperatures than "
            "the bundle now has (or before its without-metadata operating point, or, for a score read at the decided "
            "class, for another decision rule); refit it (skinlesion explain review BUNDLE)."
        )
    flagger = ReviewFlagger(review.score, review.goal, review.target)
    flagger._check_params()
    thr = review.threshold
    flags_low = review.score in CONFIDENCE_SCORES
    flagger.threshold_ = float(thr) if thr is not None else (-np.inf if flags_low else np.inf)
    v = review.validation or {}
    for attr in ("flagged_fraction", "errors_removed", "selective_risk"):
        value = v.get(attr)
        setattr(flagger, f"{attr}_", float("nan") if value is None else float(value))
    return flagger


__all__ = [
    "as_bundle",
    "bundle_mc_predict",
    "mc_operating_points",
    "review_fingerprint",
    "review_flag_from_bundle",
    "review_point",
]
