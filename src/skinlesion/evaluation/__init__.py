"""Evaluation on a lesion-disjoint split: one path for decision bundles and checkpoints.

A checkpoint is evaluated as a one-member bundle through the same steps as a bundle
(:mod:`~skinlesion.evaluation.pipeline`); the pieces are public so that benchmarks compute the
same numbers: :mod:`~skinlesion.ensemble.split` (the rows of a split of the manifest a model was
trained on), :mod:`~skinlesion.evaluation.outcomes` (argmax and decision-rule metrics with
lesion-bootstrap intervals, clinical targets, calibration before and after temperature scaling),
:mod:`~skinlesion.evaluation.report` (the tables and notes of ``report.html``).
"""

from skinlesion.ensemble.split import SPLITS, bundle_split, data_config_from_meta, load_bundle_split, load_split_table
from skinlesion.evaluation.outcomes import calibration_change, decision_intervals, decision_outcomes, target_outcomes
from skinlesion.evaluation.pipeline import BUNDLE, CHECKPOINT, evaluate_bundle, evaluate_checkpoint, evaluate_split

__all__ = [
    "BUNDLE", "CHECKPOINT", "SPLITS", "bundle_split", "calibration_change", "data_config_from_meta", "decision_intervals",
    "decision_outcomes", "evaluate_bundle", "evaluate_checkpoint", "evaluate_split", "load_bundle_split",
    "load_split_table", "target_outcomes",
]
