"""Weighted ensembles with test-time augmentation, packaged as decision bundles.

``bundle_schema`` (the typed bundle.json), ``bundle`` (loading, validation, the runtime),
``members``/``predict``/``weighting`` (running and combining members), ``split`` (the rows of a
split a bundle's members were trained on), ``build`` (building and calibrating on validation).
"""

from skinlesion.ensemble.bundle import (
    Bundle,
    BundleError,
    BundleMeta,
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
    "BundleMeta",
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
