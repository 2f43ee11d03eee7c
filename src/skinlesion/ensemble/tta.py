"""Moved to :mod:`skinlesion.inference.tta` (TTA views know nothing of bundles, and ``inference``
runs them below ``ensemble``); this module keeps the old import path working."""

from skinlesion.inference.tta import (
    D4_VIEWS,
    PRESETS,
    SWAPS_AXES,
    TTAPolicy,
    apply_view,
    average_views,
    check_view,
    deaugment_maps,
    invert_view,
    parse_views,
    tta_logits,
    tta_logits_loop,
    view_groups,
)

__all__ = [
    "D4_VIEWS", "PRESETS", "SWAPS_AXES", "TTAPolicy", "apply_view", "average_views", "check_view", "deaugment_maps",
    "invert_view", "parse_views", "tta_logits", "tta_logits_loop", "view_groups",
]
