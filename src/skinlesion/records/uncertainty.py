"""The record's ``uncertainty`` part: entropy decomposition and the review flag.

:func:`uncertainty_records` scores each image the way the bundle's review flag was fitted
(``review.method``): by MC-dropout passes (always on the PyTorch members, each image alone with the
same seed, so its result does not depend on its batch), or by the members x TTA views of the
prediction itself (:mod:`~skinlesion.uncertainty.ensemble_samples`: no extra pass, on any engine).
Each image is flagged with the review threshold of its operating point (fitted on validation with
or without the metadata), as :class:`~skinlesion.records.schema.Uncertainty`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skinlesion.ensemble.bundle import Bundle
from skinlesion.records.schema import Review, Uncertainty
from skinlesion.uncertainty.mc_predict import bundle_mc_predict, mc_operating_points, review_flag_from_bundle, review_point
from skinlesion.uncertainty.ensemble_samples import ENSEMBLE, ENSEMBLE_METHOD_TEXT, review_method, view_samples
from skinlesion.uncertainty.mc_dropout import MCResult, NotStochasticWarning

MC_METHOD = "Monte Carlo dropout (Gal & Ghahramani 2016), head and backbone dropout/drop-path, BatchNorm in eval"


def default_mc_samples(bundle: Bundle) -> int:
    """The number of MC-dropout passes the bundle's review flag was fitted with, else 20; 0 when the
    flag scores the members x TTA views of the prediction (``review.method`` ``"ensemble"``)."""
    review = bundle.spec.review
    if review_method(bundle) == ENSEMBLE:
        return 0
    return 20 if review is None or review.n_samples is None else int(review.n_samples)


def check_mc_samples(bundle: Bundle, mc_samples: int | None) -> bool:
    """Whether records get an uncertainty part: ``mc_samples`` None follows the bundle, 0 skips it.
    A bundle whose review flag scores members x views refuses MC-dropout passes (its threshold would
    not apply to them)."""
    if review_method(bundle) == ENSEMBLE:
        if mc_samples:
            raise ValueError(
                f"The 'mc_samples' parameter must be unset or 0 for this bundle: its review flag scores the members x TTA "
                f"views of the prediction itself (review.method 'ensemble'), not MC-dropout passes. Got {mc_samples!r} instead."
            )
        return mc_samples is None
    return (default_mc_samples(bundle) if mc_samples is None else mc_samples) > 0


def uncertainty_records(
    bundle: Bundle, images: Sequence[np.ndarray], n_samples: int, seed: int = 0,
    metadata: Sequence[Mapping[str, Any] | None] | None = None, view_logits: Sequence[np.ndarray] | None = None,
    decisions: Sequence[int] | np.ndarray | None = None, probs: np.ndarray | None = None,
) -> list[Uncertainty]:
    """Per image: entropy decomposition (nats) and the bundle's review flag.

    ``metadata``: one record per image, fed to metadata fusion members in every pass (None: missing).
    An image decided by the without-metadata operating point is scored with that point's
    temperatures and flagged by the review threshold fitted with the metadata hidden.
    ``view_logits``: the prediction's ``M x (N, V, K)`` logits, used (or computed) when the review
    flag scores members x views; ``n_samples`` and ``seed`` then do not apply. ``decisions`` and
    ``probs``: the class index each image's record decided and its calibrated probabilities ``(N, K)``,
    which a review scored on the decided class (``decision_prob``) reads (None: the bundle's policy on
    the samples' mean probabilities, and those)."""
    points = mc_operating_points(bundle, metadata, len(images))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotStochasticWarning)
        if review_method(bundle) == ENSEMBLE:
            method = ENSEMBLE_METHOD_TEXT
            mc = view_samples(bundle, view_logits if view_logits is not None else _view_logits(bundle, images, metadata), points)
        else:
            # One call per image with the same seed: an image's dropout masks (hence its uncertainty
            # and review flag) do not depend on which other images share its batch or request.
            method = MC_METHOD
            mc = _stack_mc([
                bundle_mc_predict(bundle, [im], n_samples=n_samples, seed=seed, metadata=[metadata[i]] if metadata else None)
                for i, im in enumerate(images)
            ])
    reviews = {str(p): review_point(bundle, str(p)) for p in set(points.tolist())}
    flags = scores = None
    if bundle.spec.review is not None:
        flags = np.zeros(len(images), dtype=bool)
        scores = np.zeros(len(images))
        for point in reviews:
            rows = points == point
            flagger = review_flag_from_bundle(bundle, point)
            decided = (np.asarray(decisions, dtype=np.int64) if decisions is not None
                       else bundle.policy_decisions(mc.mean_probs, operating_point=point))
            scores[rows] = np.asarray(flagger.score_of(mc, decided, probs))[rows]  # type: ignore[union-attr]
            flags[rows] = np.asarray(flagger.flag(scores[rows]))  # type: ignore[union-attr]
    out = []
    for i in range(len(images)):
        review = reviews[str(points[i])]
        rec = Uncertainty(
            method=method,
            n_samples=n_samples if method == MC_METHOD else int(mc.samples.shape[0]),
            stochastic=bool(mc.stochastic),
            units="nats",
            mean_probabilities=dict(zip(bundle.classes, mc.mean_probs[i].tolist(), strict=True)),
            predictive_entropy=float(mc.predictive_entropy[i]),
            aleatoric_expected_entropy=float(mc.expected_entropy[i]),
            epistemic_mutual_information=float(mc.mutual_information[i]),
            max_probability=float(mc.max_prob[i]),
            warnings=[str(w.message) for w in caught],
            review=Review(
                flag=bool(flags[i]),  # type: ignore[index]
                score=review.score,
                value=float(scores[i]),  # type: ignore[index]
                threshold=review.threshold,
                goal=f"{review.goal} {review.target} (chosen on validation)",
                operating_point=str(points[i]),
                fitted_on=review.fitted_on if "fitted_on" in review.model_fields_set else "val",
            ) if review else Review(flag=None, note="no review threshold in this bundle: run `skinlesion explain review BUNDLE`"),
        )
        out.append(rec)
    return out


def _view_logits(
    bundle: Bundle, images: Sequence[np.ndarray], metadata: Sequence[Mapping[str, Any] | None] | None
) -> list[np.ndarray]:
    from skinlesion.ensemble.predict import images_view_logits

    given = [dict(r or {}) for r in metadata] if metadata is not None else None
    return [images_view_logits(m, images, bundle.tta.views, metadata=given) for m in bundle.members]  # type: ignore[arg-type]


def _stack_mc(results: Sequence[MCResult]) -> MCResult:
    """Concatenate per-image MCResults along the image axis (same members, passes and weights)."""
    first = results[0]
    return MCResult.from_samples(
        np.concatenate([r.samples for r in results], axis=1),
        first.sample_weights,
        stochastic=any(r.stochastic for r in results),
        stochastic_layers=first.stochastic_layers,
    )
