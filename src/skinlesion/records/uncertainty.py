"""The record's ``uncertainty`` part: MC-dropout entropy decomposition and the review flag.

:func:`uncertainty_records` runs the bundle's MC-dropout passes (always on the PyTorch members,
each image alone with the same seed, so its result does not depend on its batch) and flags each
image with the review threshold of its operating point (fitted on validation with or without the
metadata), as :class:`~skinlesion.records.schema.Uncertainty`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from skinlesion.ensemble.bundle import Bundle
from skinlesion.records.schema import Review, Uncertainty
from skinlesion.uncertainty.mc_predict import bundle_mc_predict, mc_operating_points, review_flag_from_bundle, review_point
from skinlesion.uncertainty.mc_dropout import MCResult, NotStochasticWarning

MC_METHOD = "Monte Carlo dropout (Gal & Ghahramani 2016), head and backbone dropout/drop-path, BatchNorm in eval"


def default_mc_samples(bundle: Bundle) -> int:
    """The number of MC-dropout passes the bundle's review flag was fitted with, else 20."""
    review = bundle.spec.review
    return 20 if review is None or review.n_samples is None else int(review.n_samples)


def uncertainty_records(
    bundle: Bundle, images: Sequence[np.ndarray], n_samples: int, seed: int = 0,
    metadata: Sequence[Mapping[str, Any] | None] | None = None,
) -> list[Uncertainty]:
    """Per image: MC-dropout entropy decomposition (nats) and the bundle's review flag.

    ``metadata``: one record per image, fed to metadata fusion members in every pass (None: missing).
    An image decided by the without-metadata operating point is scored with that point's
    temperatures and flagged by the review threshold fitted with the metadata hidden."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotStochasticWarning)
        # One call per image with the same seed: an image's dropout masks (hence its uncertainty
        # and review flag) do not depend on which other images share its batch or request.
        per_image = [
            bundle_mc_predict(bundle, [im], n_samples=n_samples, seed=seed, metadata=[metadata[i]] if metadata else None)
            for i, im in enumerate(images)
        ]
    mc = _stack_mc(per_image)
    points = mc_operating_points(bundle, metadata, len(images))
    reviews = {str(p): review_point(bundle, str(p)) for p in set(points.tolist())}
    flags = scores = None
    if bundle.spec.review is not None:
        flags = np.zeros(len(images), dtype=bool)
        scores = np.zeros(len(images))
        for point in reviews:
            rows = points == point
            flagger = review_flag_from_bundle(bundle, point)
            scores[rows] = np.asarray(flagger.score_of(mc))[rows]  # type: ignore[union-attr]
            flags[rows] = np.asarray(flagger.flag(scores[rows]))  # type: ignore[union-attr]
    out = []
    for i in range(len(images)):
        review = reviews[str(points[i])]
        rec = Uncertainty(
            method=MC_METHOD,
            n_samples=n_samples,
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


def _stack_mc(results: Sequence[MCResult]) -> MCResult:
    """Concatenate per-image MCResults along the image axis (same members, passes and weights)."""
    first = results[0]
    return MCResult.from_samples(
        np.concatenate([r.samples for r in results], axis=1),
        first.sample_weights,
        stochastic=any(r.stochastic for r in results),
        stochastic_layers=first.stochastic_layers,
    )
