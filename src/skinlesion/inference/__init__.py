"""Running one model: test-time augmentation views (:mod:`~skinlesion.inference.tta`: exact D4 and
centre-zoom views, batched into one forward call) and batched prediction over a table
(:mod:`~skinlesion.inference.table`, with the model's own preprocessing; long passes on the CPU run
in ONNX Runtime, :mod:`~skinlesion.inference.onnx_graph`, which also builds the graphs the bundle
export writes).

Below ``train`` and ``ensemble``: training predicts its validation split with it, and a bundle's
members run through it, so neither knows the other.
"""

from skinlesion.inference.table import default_device, predict_table, table_view_logits, table_view_logits_with_hidden
from skinlesion.inference.tta import D4_VIEWS, TTAPolicy, parse_views, tta_logits

__all__ = ["D4_VIEWS", "TTAPolicy", "default_device", "parse_views", "predict_table", "table_view_logits",
           "table_view_logits_with_hidden", "tta_logits"]
