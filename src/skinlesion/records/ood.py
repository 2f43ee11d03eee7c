"""The record's ``ood`` part: the out-of-distribution gate of the bundle (``decision.ood``).

The gate (:mod:`skinlesion.ood.gate`) scores an image by the distance of its members' pooled image
features to those of the training images; above the threshold fitted on held-out images the image
is *gated*: it keeps its probabilities and diagnosis, but every output shows the warning beside them.
The features come from one identity view of the gate's members: from the engine's own pass when
it gives them (ONNX exports of format 3, :meth:`~skinlesion.delivery.onnx_runtime.OnnxEngine.view_logits_and_features`)
and the gate reads features only, else from a PyTorch pass of the gate's members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def gate_feature_members(bundle: Bundle) -> list[str]:
    """The members whose identity-view image features an engine may hand to :func:`ood_records`: the
    gate's members when every score of the gate reads features only (not when one reads logits,
    which must be the image-only logits), else none; none when the bundle has no gate."""
    gate = bundle_gate(bundle)
    return list(gate.members_) if gate is not None and gate.inputs_ == {"features"} else []


def ood_records(
    bundle: Bundle, images: Sequence[np.ndarray], device: str | None = None, features: Mapping[str, np.ndarray] | None = None,
) -> list[OutOfDistribution] | None:
    """One gate result per RGB uint8 image, or None when the bundle has no gate.

    ``features``: pooled image features ``(N, F)`` of the identity view by member name, from the
    engine's pass (:func:`gate_feature_members` says which it may give); used when they cover every
    member of the gate and the gate reads features only, else the gate's members run in PyTorch."""
    gate = bundle_gate(bundle)
    if gate is None:
        return None
    from skinlesion.ood.features import MemberFeatures, image_features

    given = features or {}
    names = gate_feature_members(bundle)
    if names and all(n in given for n in names):
        for n in names:
            if given[n].shape[0] != len(images):
                raise ValueError(f"The 'features' of member {n!r} hold {given[n].shape[0]} rows for {len(images)} images.")
        no_logits = np.zeros((len(images), 0), np.float32)  # the gate reads features only
        outputs = [MemberFeatures(n, np.asarray(given[n], np.float32), no_logits) for n in names]
    else:
        outputs = image_features([m for m in bundle.members if m.name in gate.members_], images, device=device)
    scores = gate.score(outputs)
    method = gate_method_text(bundle.meta["decision"]["ood"])
    out = []
    for s, gated in zip(scores.astype(float).tolist(), gate.is_out(scores).tolist(), strict=True):
        out.append(OutOfDistribution(
            gated=bool(gated), warning=WARNING if gated else None, score=s, threshold=float(gate.threshold_), method=method,
        ))
    return out
