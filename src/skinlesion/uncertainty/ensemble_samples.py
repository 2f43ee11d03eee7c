"""Uncertainty from the passes a prediction already makes: every member's every TTA view as a sample.

A deep ensemble with test-time augmentation is itself a sample of predictive distributions
(Lakshminarayanan et al., NeurIPS 2017; Ayhan & Berens, MIDL 2018): member ``m``'s view ``v`` gives
``softmax(z_mv / T + b)`` with the bundle's temperatures (and biases) of the operating point that
decides the image, weighted ``w_m / V``. The same entropy decomposition as MC dropout (Depeweg et al.
2018) follows: predictive entropy = expected entropy (aleatoric) + mutual information (the spread
between members and views, the epistemic part). It costs no extra forward pass, so a bundle whose
review flag uses it (``review.method = "ensemble"``) is served without MC dropout.

Fitting on held-out rows: a cross-fitted bundle's validation rows are predicted out-of-fold by one
member each (``validation.npz`` holds that member's logits in every member slot), so there the
samples are one member's views. :func:`cache_outputs` builds the arrays
:func:`~skinlesion.uncertainty.review_fit.fit_review_flag` fits on from the validation cache;
whether a threshold fitted on one member's scores transfers to the K-member average is measured
on test (``bench/risk_coverage.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, Bundle
from skinlesion.uncertainty.mc_dropout import MCResult
from skinlesion.uncertainty.mc_predict import _tempered_members
from skinlesion.uncertainty.review import ARRAYS

#: ``review.method`` of a review flag scored on the members x TTA views of the prediction itself.
ENSEMBLE = "ensemble"
#: ``review.method`` of a review flag scored on MC-dropout passes (bundles fitted before ``method`` existed).
MC_DROPOUT = "mc_dropout"
METHODS = (MC_DROPOUT, ENSEMBLE)
ENSEMBLE_METHOD_TEXT = "members x TTA views of the prediction itself (deep ensemble with test-time augmentation; no extra passes)"


def review_method(bundle: Bundle) -> str:
    """How the bundle's review flag scores a case: :data:`ENSEMBLE` or :data:`MC_DROPOUT` (also without a review)."""
    review = bundle.spec.review
    method = None if review is None else getattr(review, "method", None)
    return str(method) if method else MC_DROPOUT


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def view_samples(bundle: Bundle, view_logits: Sequence[np.ndarray], points: np.ndarray | None = None) -> MCResult:
    """Members x views as weighted samples ``(M*V, N, K)``; see the module doc.

    ``view_logits``: ``M x (N, V, K)`` as the engines return them. ``points``: per row ``(N,)`` the
    operating point whose temperatures score it (None: :data:`WITH_METADATA` for every row).
    """
    if len(view_logits) != len(bundle.members):
        raise ValueError(f"Got view logits of {len(view_logits)} members; the bundle has {len(bundle.members)}")
    z = np.stack([np.asarray(v, dtype=np.float64) for v in view_logits])  # (M, N, V, K)
    m, n, v, k = z.shape
    points = np.full(n, WITH_METADATA) if points is None else np.asarray(points)
    if points.shape != (n,):
        raise ValueError(f"The 'points' parameter must have shape ({n},). Got {points.shape} instead.")
    scaled = np.empty_like(z)
    for point in np.unique(points):
        rows = points == point
        bias = bundle.class_bias(str(point))
        bias = 0.0 if bias is None else bias
        for i, member in enumerate(_tempered_members(bundle, str(point))):  # the temperatures MC passes use
            scaled[i, rows] = z[i, rows] / member.temperature + bias
    probs = _softmax(scaled)  # (M, N, V, K)
    samples = probs.transpose(0, 2, 1, 3).reshape(m * v, n, k)
    w = np.asarray([member.weight for member in bundle.members], dtype=np.float64)
    weights = np.repeat(w / w.sum() / v, v)
    return MCResult.from_samples(samples, weights, stochastic=True, stochastic_layers=("members", "views"))


def outputs_from_samples(res: MCResult, y: np.ndarray, groups: np.ndarray, image_ids: np.ndarray, probs: np.ndarray | None = None,
                         **info: Any) -> dict[str, Any]:
    """The arrays :func:`~skinlesion.uncertainty.review_fit.fit_review_flag` fits and reports on;
    ``probs``: the bundle's calibrated probabilities of the same rows (what its decision is taken on)."""
    out: dict[str, Any] = {key: np.asarray(getattr(res, key)) for key in ARRAYS}
    if probs is not None:
        out["probs"] = np.asarray(probs)
    out["prediction"] = out["mean_probs"].argmax(axis=1)
    out["y"] = np.asarray(y)
    out["correct"] = out["prediction"] == out["y"]
    out["groups"] = np.asarray(groups)
    out["image_ids"] = np.asarray(image_ids)
    out.update(stochastic=True, n_samples=int(res.samples.shape[0]), include_backbone=False, **info)
    return out


def cache_outputs(bundle: Bundle, *, hide_metadata: bool = False, data_root: str | None = None) -> dict[str, Any]:
    """Ensemble-sample outputs of the bundle's validation cache (out-of-fold for a cross-fitted bundle),
    scored by the main operating point or, with ``hide_metadata``, by the without-metadata one."""
    from skinlesion.ensemble.build import _cache_ids, load_validation_cache, validation_logits_without_metadata

    logits, _, _ = load_validation_cache(bundle)
    image_id, group, y = _cache_ids(bundle)
    if hide_metadata:
        logits = validation_logits_without_metadata(bundle, logits, data_root=data_root)
    point = WITHOUT_METADATA if hide_metadata and bundle.without_metadata is not None else WITH_METADATA
    return outputs_from_samples(
        view_samples(bundle, logits, np.full(len(y), point)), y, group, image_id,
        probs=np.exp(bundle.log_probs(logits, operating_point=point)), split="val", metadata_hidden=bool(hide_metadata),
        out_of_fold=bool(bundle.member_folds),
    )


def split_outputs(bundle: Bundle, split: str, *, hide_metadata: bool = False, data_root: str | None = None,
                  batch_size: int = 32) -> dict[str, Any]:
    """Ensemble-sample outputs of every member on a split's images (e.g. test: the K-member average)."""
    from skinlesion.data.splits import group_ids
    from skinlesion.ensemble.predict import member_view_logits
    from skinlesion.evaluation import load_bundle_split

    table = load_bundle_split(bundle, split, data_root)
    logits = [
        member_view_logits(m, table, bundle.tta.views, batch_size=batch_size, use_metadata=not hide_metadata) for m in bundle.members
    ]
    point = WITHOUT_METADATA if hide_metadata and bundle.without_metadata is not None else WITH_METADATA
    return outputs_from_samples(
        view_samples(bundle, logits, np.full(len(table), point)), table.labels(), group_ids(table).to_numpy(),
        table.frame["image_id"].astype(str).to_numpy(), probs=np.exp(bundle.log_probs(logits, operating_point=point)),
        split=split, metadata_hidden=bool(hide_metadata),
    )


__all__ = [
    "ENSEMBLE",
    "ENSEMBLE_METHOD_TEXT",
    "MC_DROPOUT",
    "METHODS",
    "cache_outputs",
    "outputs_from_samples",
    "review_method",
    "split_outputs",
    "view_samples",
]
