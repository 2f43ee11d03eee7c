"""Weighted ensembles with test-time augmentation, packaged as decision bundles."""

from skinlesion.ensemble.bundle import (
    Bundle,
    BundleError,
    BundlePrediction,
    bundle_from_checkpoint,
    load_bundle,
    load_model_source,
)
from skinlesion.ensemble.members import Member
from skinlesion.ensemble.weighting import EnsembleWeights, combine_log_probs
from skinlesion.inference.tta import (
    D4_VIEWS,
    TTAPolicy,
    apply_view,
    deaugment_maps,
    invert_view,
    parse_views,
)

__all__ = [
    "D4_VIEWS",
    "Bundle",
    "BundleError",
    "BundlePrediction",
    "EnsembleWeights",
    "Member",
    "TTAPolicy",
    "apply_view",
    "bundle_from_checkpoint",
    "combine_log_probs",
    "deaugment_maps",
    "invert_view",
    "load_bundle",
    "load_model_source",
    "parse_views",
]
