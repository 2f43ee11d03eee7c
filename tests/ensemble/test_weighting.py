from __future__ import annotations

import numpy as np
import pytest

from skinlesion.ensemble.weighting import EnsembleWeights, combine_log_probs
from skinlesion.metrics.classification import balanced_accuracy


def _members(seed: int = 0, n: int = 600, k: int = 3) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    out = []
    for strength in (2.5, 1.0, 0.2):  # good, weak, nearly useless member
        z = rng.normal(0, 1, (n, k))
        z[np.arange(n), y] += strength
        out.append(z - np.log(np.exp(z).sum(1, keepdims=True)))
    return out, y


def test_bacc_weights_reproduce_the_reference_formula() -> None:
    lps, y = _members()
    w = EnsembleWeights("bacc").fit(lps, y)
    bacc = np.array([balanced_accuracy(y, lp.argmax(1), 3) for lp in lps])
    np.testing.assert_allclose(w.weights_, bacc / bacc.sum())
    np.testing.assert_allclose(w.member_bacc_, bacc)


def test_fitted_weights_lower_validation_nll() -> None:
    lps, y = _members()
    uniform = EnsembleWeights("uniform").fit(lps, y)
    bacc = EnsembleWeights("bacc").fit(lps, y)
    fitted = EnsembleWeights("nll").fit(lps, y)
    assert fitted.weights_.min() >= 0 and fitted.weights_.sum() == pytest.approx(1.0)
    assert fitted.nll_ < bacc.nll_ < uniform.nll_
    assert fitted.weights_[0] > fitted.weights_[2]
    np.testing.assert_allclose(uniform.weights_, [1 / 3] * 3)


def test_combine_is_the_weighted_mixture() -> None:
    lps, _ = _members()
    w = np.array([0.5, 0.3, 0.2])
    expected = np.log(sum(wi * np.exp(lp) for wi, lp in zip(w, lps, strict=True)))
    np.testing.assert_allclose(combine_log_probs(lps, w), expected, atol=1e-12)
    with pytest.raises(ValueError, match="2 weights for 3 members"):
        combine_log_probs(lps, [0.5, 0.5])


def test_errors() -> None:
    lps, y = _members()
    with pytest.raises(ValueError, match="'method' parameter must be one of"):
        EnsembleWeights("mean").fit(lps, y)
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleWeights().fit([], y)
    with pytest.raises(ValueError, match="one shape"):
        EnsembleWeights().fit([lps[0], lps[1][:10]], y)
