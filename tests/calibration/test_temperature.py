from __future__ import annotations

import numpy as np
import pytest

from skinlesion.calibration.temperature import BiasedTemperatureScaler, TemperatureScaler, apply_temperature
from skinlesion.metrics.calibration import expected_calibration_error, negative_log_likelihood


def _overconfident(n: int = 3000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits drawn from a well-calibrated model, then multiplied by 3 (overconfident)."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, size=(n, k))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    return true_logits * 3.0, y


def test_recovers_the_known_temperature() -> None:
    z, y = _overconfident()
    scaler = TemperatureScaler().fit(z, y)
    assert scaler.temperature_ == pytest.approx(3.0, rel=0.15)
    assert scaler.nll_after_ < scaler.nll_before_
    p = scaler.predict_proba(z)
    assert negative_log_likelihood(y, p) == pytest.approx(scaler.nll_after_, rel=1e-6)
    np.testing.assert_array_equal(p.argmax(1), z.argmax(1))  # temperature never changes the argmax


def test_view_logits_are_scaled_before_averaging() -> None:
    z, y = _overconfident(1000)
    views = np.stack([z, z + np.random.default_rng(1).normal(0, 0.5, z.shape)], axis=1)
    t = TemperatureScaler("prob").fit(views, y).temperature_
    manual = np.log(np.mean(np.exp(views / t) / np.exp(views / t).sum(-1, keepdims=True), axis=1))
    np.testing.assert_allclose(apply_temperature(views, t, "prob"), manual, atol=1e-10)


def test_errors() -> None:
    with pytest.raises(RuntimeError, match="call fit"):
        TemperatureScaler().transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape \\(N, K\\) or \\(N, V, K\\)"):
        TemperatureScaler().fit(np.zeros(5), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="class indices in \\[0, 2\\]"):
        TemperatureScaler().fit(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="'temperature' parameter must be a positive"):
        apply_temperature(np.zeros((2, 3)), 0.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        TemperatureScaler().fit(np.full((2, 3), np.nan), np.array([0, 1]))


def _prior_shifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model trained with class weights: calibrated at temperature 2 except for a known
    per-class offset (the rare class 2 inflated by +1.5, class 1 deflated by -1)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.3, 0.6, 0.1])
    true = rng.normal(0, 1, (n, 3))
    true[np.arange(n), y] += 2.0
    # sample labels from the true softmax so that softmax(true) is calibrated
    p = np.exp(true) / np.exp(true).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    logits = 2.0 * (true + np.array([0.0, -1.0, 1.5]))
    return logits, y


def test_class_biases_undo_a_prior_shift_that_a_temperature_cannot() -> None:
    z, y = _prior_shifted(6000, 0)
    bcts = BiasedTemperatureScaler().fit(z, y)
    assert bcts.temperature_ == pytest.approx(2.0, rel=0.1)
    np.testing.assert_allclose(bcts.bias_, [0.0, 1.0, -1.5], atol=0.15)  # relative to class 0
    zt, yt = _prior_shifted(6000, 1)
    plain = TemperatureScaler().fit(z, y)
    p_plain, p_bcts = plain.predict_proba(zt), np.exp(bcts.transform(zt))
    assert negative_log_likelihood(yt, p_bcts) < negative_log_likelihood(yt, p_plain) - 0.02
    assert expected_calibration_error(yt, p_bcts) < expected_calibration_error(yt, p_plain)


def test_biased_scaler_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"'logits' parameter must have shape \(N, K\)"):
        BiasedTemperatureScaler().fit(np.zeros((4, 2, 3)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="'y' parameter must hold class indices"):
        BiasedTemperatureScaler().fit(np.zeros((4, 3)), np.array([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="not fitted yet"):
        BiasedTemperatureScaler().transform(np.zeros((2, 3)))
