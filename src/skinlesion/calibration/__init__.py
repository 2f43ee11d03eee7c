"""Post-hoc calibration fitted on validation data only: temperature scaling, clinical thresholds, decision rule."""

from skinlesion.calibration.decision import DEFAULT_PRIORITY, decide
from skinlesion.calibration.temperature import TemperatureScaler, apply_temperature
from skinlesion.calibration.thresholds import (
    Target,
    ThresholdCalibrator,
    ThresholdChoice,
    parse_targets,
    search_threshold,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "Target",
    "TemperatureScaler",
    "ThresholdCalibrator",
    "ThresholdChoice",
    "apply_temperature",
    "decide",
    "parse_targets",
    "search_threshold",
]
