"""Out-of-distribution gate: "this image does not look like the dermoscopic images the model was trained on".

Features and logits of the bundle's members (:mod:`~skinlesion.ood.features`), candidate scores
fitted on training images (:mod:`~skinlesion.ood.scores`), the gate whose threshold is set on
validation (:mod:`~skinlesion.ood.gate`), and generated out-of-distribution image sets to measure it
on (:mod:`~skinlesion.ood.sets`). ``bench/ood.py`` compares the scores.
"""

from skinlesion.ood.features import MemberFeatures, features_and_logits, image_features, table_features
from skinlesion.ood.gate import OODGate, bundle_gate
from skinlesion.ood.scores import (
    SCORES,
    EnergyScore,
    KNNScore,
    MahalanobisScore,
    MaxSoftmaxScore,
    OODScore,
    make_score,
    score_from_dict,
)
from skinlesion.ood.sets import OODSet, generated_sets

__all__ = [
    "SCORES",
    "EnergyScore",
    "KNNScore",
    "MahalanobisScore",
    "MaxSoftmaxScore",
    "MemberFeatures",
    "OODGate",
    "OODScore",
    "OODSet",
    "features_and_logits",
    "bundle_gate",
    "generated_sets",
    "image_features",
    "make_score",
    "score_from_dict",
    "table_features",
]
