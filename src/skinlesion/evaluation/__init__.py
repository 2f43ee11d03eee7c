"""Evaluation on a lesion-disjoint split: one path for decision bundles and checkpoints.

A checkpoint is evaluated as a one-member bundle through the same steps as a bundle
(:mod:`~skinlesion.evaluation.pipeline`); the pieces are public so that benchmarks compute the
same numbers:

* :mod:`~skinlesion.evaluation.split`: the rows of a split of the manifest a model was trained on;
* :mod:`~skinlesion.evaluation.outcomes`: argmax and decision-rule metrics with lesion-bootstrap
  intervals, clinical targets, calibration before and after temperature scaling;
* :mod:`~skinlesion.evaluation.report`: the tables and notes of ``report.html``.
"""

from skinlesion.evaluation.outcomes import (
    argmax_outcomes,
    calibration_change,
    decision_intervals,
    decision_outcomes,
    probability_calibration,
    target_outcomes,
)
from skinlesion.evaluation.pipeline import (
    BUNDLE,
    CHECKPOINT,
    Layout,
    SplitPredictions,
    evaluate_bundle,
    evaluate_checkpoint,
    evaluate_split,
    predict_split,
)
from skinlesion.evaluation.split import (
    SPLITS,
    BundleSplit,
    bundle_split,
    check_split,
    data_config_from_meta,
    load_bundle_split,
    load_split_table,
)

__all__ = [
    "BUNDLE",
    "CHECKPOINT",
    "SPLITS",
    "BundleSplit",
    "Layout",
    "SplitPredictions",
    "argmax_outcomes",
    "bundle_split",
    "calibration_change",
    "check_split",
    "data_config_from_meta",
    "decision_intervals",
    "decision_outcomes",
    "evaluate_bundle",
    "evaluate_checkpoint",
    "evaluate_split",
    "load_bundle_split",
    "load_split_table",
    "predict_split",
    "probability_calibration",
    "target_outcomes",
]
