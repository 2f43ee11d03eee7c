"""The record's ``ood`` part: the out-of-distribution gate of the bundle (``decision.ood``).

The gate (:mod:`skinlesion.ood.gate`) scores an image by the distance of its members' pooled image
features to those of the training images; above the threshold fitted on held-out images the image
is *gated*: it keeps its probabilities and diagnosis, but every output shows the warning beside them.
The features come from one identity view of the gate's members (PyTorch, whatever the engine).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from skinlesion.ensemble.bundle import Bundle
from skinlesion.ood.gate import bundle_gate
from skinlesion.records.schema import OutOfDistribution

WARNING = (
    "This image does not look like the dermoscopic images the model was trained on: "
    "do not rely on its probabilities, diagnosis, flags or referral."
)


def gate_method_text(spec: dict) -> str:  # type: ignore[type-arg]
    prov = spec.get("provenance") or {}
    return (
        f"{spec.get('score')} score of members {spec.get('members')}; threshold at the {spec.get('quantile')} quantile of "
        f"held-out in-distribution images ({prov.get('fitted_on', 'train / val')})"
    )


def ood_records(bundle: Bundle, images: Sequence[np.ndarray], device: str | None = None) -> list[OutOfDistribution] | None:
    """One gate result per RGB uint8 image, or None when the bundle has no gate."""
    gate = bundle_gate(bundle)
    if gate is None:
        return None
    from skinlesion.ood.features import image_features

    used = [m for m in bundle.members if m.name in gate.members_]
    scores = gate.score(image_features(used, images, device=device))
    method = gate_method_text(bundle.meta["decision"]["ood"])
    out = []
    for s, gated in zip(scores.astype(float).tolist(), gate.is_out(scores).tolist(), strict=True):
        out.append(OutOfDistribution(
            gated=bool(gated), warning=WARNING if gated else None, score=s, threshold=float(gate.threshold_), method=method,
        ))
    return out
