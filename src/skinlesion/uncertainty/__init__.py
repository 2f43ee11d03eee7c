"""Predictive uncertainty: MC dropout, its epistemic/aleatoric split, and flagging cases for review."""

from skinlesion.uncertainty.mc_dropout import (
    MCResult,
    NotStochasticWarning,
    ensemble_mc_predict,
    expected_entropy,
    mc_dropout_mode,
    mc_dropout_predict,
    mutual_information,
    predictive_entropy,
)
from skinlesion.uncertainty.review import ReviewFlagger

__all__ = [
    "MCResult",
    "NotStochasticWarning",
    "ReviewFlagger",
    "ensemble_mc_predict",
    "expected_entropy",
    "mc_dropout_mode",
    "mc_dropout_predict",
    "mutual_information",
    "predictive_entropy",
]
