"""Evaluation metrics: classification, calibration, lesion-level bootstrap, ISIC files/scorer."""

from skinlesion.metrics.bootstrap import bootstrap_ci, bootstrap_difference_ci, standard_metric_fns
from skinlesion.metrics.calibration import (
    brier_score,
    classwise_ece,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from skinlesion.metrics.classification import (
    UndefinedMetricWarning,
    balanced_accuracy,
    compute_classification_metrics,
    per_class_metrics,
)
from skinlesion.metrics.isic import score_with_isic_challenge_scoring, write_ground_truth, write_submission

__all__ = [
    "UndefinedMetricWarning",
    "balanced_accuracy",
    "bootstrap_ci",
    "bootstrap_difference_ci",
    "brier_score",
    "classwise_ece",
    "compute_classification_metrics",
    "expected_calibration_error",
    "negative_log_likelihood",
    "per_class_metrics",
    "reliability_curve",
    "score_with_isic_challenge_scoring",
    "standard_metric_fns",
    "write_ground_truth",
    "write_submission",
]
