"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017), and
temperature with per-class biases (:class:`BiasedTemperatureScaler`).

One scalar ``T > 0`` divides the logits before the softmax; it is fitted by minimising the negative
log-likelihood on validation data and never changes the argmax of a single forward pass. With TTA
views ``(N, V, K)`` the temperature is applied to every view before the views are averaged, so
the fitted ``T`` is the one that calibrates what the bundle actually outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax

#: How the logits of TTA views ``(N, V, K)`` are combined: mean probability or mean logit (also
#: the choices of :class:`skinlesion.ensemble.tta.TTAPolicy`, which imports this definition).
AVERAGES = ("prob", "logit")


def _check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (2, 3) or z.shape[-1] < 2 or z.shape[0] == 0:
        raise ValueError(
            f"The {name!r} parameter must have shape (N, K) or (N, V, K) with N >= 1 and K >= 2. Got {z.shape} instead."
        )
    if not np.isfinite(z).all():
        raise ValueError(f"The {name!r} parameter contains NaN or infinite values.")
    return z


def apply_temperature(logits: Any, temperature: float, average: str = "prob") -> np.ndarray:
    """Calibrated log-probabilities ``(N, K)`` from logits ``(N, K)`` or view logits ``(N, V, K)``."""
    if average not in AVERAGES:
        raise ValueError(f"The 'average' parameter must be one of {AVERAGES}. Got {average!r} instead.")
    if not (isinstance(temperature, (int, float, np.floating)) and temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"The 'temperature' parameter must be a positive finite number. Got {temperature!r} instead.")
    z = _check_logits(logits)
    if z.ndim == 2:
        return log_softmax(z / temperature, axis=-1)
    lp = log_softmax(z / temperature, axis=-1)
    if average == "logit":
        return log_softmax(z.mean(axis=1) / temperature, axis=-1)
    # log of the mean probability over views, computed stably
    m = lp.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(lp - m).mean(axis=1, keepdims=True)))[:, 0, :]


def mean_nll(log_probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels ``y`` (N,) under log-probabilities ``(N, K)``."""
    return float(-log_probs[np.arange(y.shape[0]), y].mean())


class TemperatureScaler:
    """Fit one temperature on validation logits.

    Parameters:
        average: how TTA views ``(N, V, K)`` are combined after scaling (``prob`` or ``logit``).
        bounds: search interval for ``T`` (log-uniform bounded search).
    """

    def __init__(self, average: str = "prob", bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        self.average = average
        self.bounds = bounds

    def fit(self, logits: Any, y: Any) -> TemperatureScaler:
        if self.average not in AVERAGES:
            raise ValueError(f"The 'average' parameter must be one of {AVERAGES}. Got {self.average!r} instead.")
        lo, hi = self.bounds
        if not (0 < lo < 1 < hi):
            raise ValueError(f"The 'bounds' parameter must satisfy 0 < low < 1 < high. Got {self.bounds!r} instead.")
        z = _check_logits(logits)
        labels = np.asarray(y)
        if labels.shape != (z.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"The 'y' parameter must be {z.shape[0]} integer class indices. Got shape {labels.shape}.")
        if labels.min() < 0 or labels.max() >= z.shape[-1]:
            raise ValueError(f"The 'y' parameter must hold class indices in [0, {z.shape[-1] - 1}].")

        def objective(log_t: float) -> float:
            return mean_nll(apply_temperature(z, float(np.exp(log_t)), self.average), labels)

        res = minimize_scalar(objective, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-5})
        self.temperature_ = float(np.exp(res.x))
        self.nll_before_ = objective(0.0)
        self.nll_after_ = float(res.fun)
        if self.nll_after_ > self.nll_before_:  # the bounded search can only stop near the optimum; keep T=1 if not better
            self.temperature_, self.nll_after_ = 1.0, self.nll_before_
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "temperature_"):
            raise RuntimeError("This TemperatureScaler is not fitted yet: call fit(logits, y) first.")

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated log-probabilities ``(N, K)``."""
        self._check_fitted()
        return apply_temperature(logits, self.temperature_, self.average)

    def predict_proba(self, logits: Any) -> np.ndarray:
        return np.exp(self.transform(logits))


class BiasedTemperatureScaler:
    """One temperature and one bias per class, ``softmax(z / T + b)``, fitted by validation NLL:
    bias-corrected temperature scaling (BCTS; Alexandari, Kundaje & Shrikumar, ICML 2020).

    A model trained with a class-weighted loss over-calls the rare classes: its probabilities carry
    the training weights as a prior shift, which one temperature cannot undo (on the default bundle's
    validation images, held-out ECE 0.118 with a temperature alone, 0.036 with the biases too). The
    biases are identified up to a constant, so the first class's is 0. Works on 2-D logits ``(N, K)``
    (e.g. an ensemble's combined log-probabilities).

    Fitted: ``temperature_``, ``bias_`` ``(K,)``, ``nll_before_``, ``nll_after_``.
    """

    def __init__(self, max_abs_bias: float = 10.0) -> None:
        self.max_abs_bias = max_abs_bias

    def fit(self, logits: Any, y: Any) -> BiasedTemperatureScaler:
        z = _check_logits(logits)
        if z.ndim != 2:
            raise ValueError(f"The 'logits' parameter must have shape (N, K). Got {z.shape} instead.")
        labels = np.asarray(y)
        if labels.shape != (z.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"The 'y' parameter must be {z.shape[0]} integer class indices. Got shape {labels.shape}.")
        if labels.min() < 0 or labels.max() >= z.shape[1]:
            raise ValueError(f"The 'y' parameter must hold class indices in [0, {z.shape[1] - 1}].")
        k = z.shape[1]
        rows = np.arange(z.shape[0])
        onehot = np.eye(k)[labels]

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            t = np.exp(w[0])
            b = np.r_[0.0, w[1:]]
            lp = log_softmax(z / t + b, axis=1)
            resid = np.exp(lp) - onehot  # d NLL / d logits, per row
            grad_b = resid.mean(axis=0)[1:]
            grad_logt = float((resid * (-z / t)).sum(axis=1).mean())
            return float(-lp[rows, labels].mean()), np.r_[grad_logt, grad_b]

        bounds = [(np.log(0.05), np.log(20.0))] + [(-self.max_abs_bias, self.max_abs_bias)] * (k - 1)
        res = minimize(objective, np.zeros(k), jac=True, method="L-BFGS-B", bounds=bounds)
        self.nll_before_ = objective(np.zeros(k))[0]
        self.temperature_, self.bias_, self.nll_after_ = float(np.exp(res.x[0])), np.r_[0.0, res.x[1:]], float(res.fun)
        if self.nll_after_ > self.nll_before_:
            self.temperature_, self.bias_, self.nll_after_ = 1.0, np.zeros(k), self.nll_before_
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated log-probabilities ``(N, K)``."""
        if not hasattr(self, "temperature_"):
            raise RuntimeError("This BiasedTemperatureScaler is not fitted yet: call fit(logits, y) first.")
        z = _check_logits(logits)
        return log_softmax(z / self.temperature_ + self.bias_, axis=-1)
