"""Statistics of a bank: mean CAV of a member's runs and the member-weighted TCAV test.

The weighted table combines the members run by run (every member sees the same random negative
set in run ``i``), t-tests the weighted scores against the weighted random runs (Kim et al. 2018,
§3.2) and corrects the p-values over all (class, concept) tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from skinlesion.explain._tcav_stats import ConceptResult, correct_pvalues, two_sided_pvalue
from skinlesion.explain.concept_bank.bank import ConceptVector


def mean_cav(member: str, concept: str, layer: str, cavs: Sequence[Any]) -> ConceptVector:
    vectors = np.stack([c.vector_ for c in cavs])
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    unit = mean / norm if norm > 0 else np.zeros_like(mean)
    accs = [c.accuracy_ for c in cavs]
    return ConceptVector(member, concept, layer, unit.astype(np.float32), float(np.mean(accs)), float(np.std(accs)),
                         norm, len(cavs))


def weighted_results(member_results: Mapping[str, list[ConceptResult]], weights: Mapping[str, float], *,
                      correction: str, min_cav_accuracy: float) -> list[ConceptResult]:
    """Run-by-run weighted TCAV scores over members, t-tested and corrected (see the module docstring)."""
    names = [m for m in member_results if weights[m] > 0]
    if names:
        w = {m: weights[m] / sum(weights[n] for n in names) for m in names}
    else:  # all weights 0: plain mean
        names = list(member_results)
        w = {m: 1.0 / len(names) for m in names}
    by_key = {m: {(r.class_index, r.concept): r for r in member_results[m]} for m in names}
    out = []
    for ref in member_results[names[0]]:
        rows = [(w[m], by_key[m][(ref.class_index, ref.concept)]) for m in names]
        scores = np.sum([wi * np.asarray(r.scores) for wi, r in rows], axis=0)
        rand = np.sum([wi * np.asarray(r.random_scores) for wi, r in rows], axis=0)
        acc = float(sum(wi * r.cav_accuracy for wi, r in rows))
        p = two_sided_pvalue(scores, rand)
        out.append(replace(ref, score_mean=float(scores.mean()), score_std=float(scores.std()),
                           random_mean=float(rand.mean()), random_std=float(rand.std()), p_value=p,
                           cav_accuracy=acc, cav_accurate=acc >= min_cav_accuracy,
                           scores=tuple(float(s) for s in scores), random_scores=tuple(float(s) for s in rand)))
    corrected = correct_pvalues([r.p_value for r in out], correction)
    return [replace(r, p_value_corrected=p, significant=bool(p < r.alpha and r.cav_accurate))
            for r, p in zip(out, corrected)]
