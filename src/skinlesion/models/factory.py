"""Backbone factory: a timm model for a registered backbone, with its dropout and weights.

The specs (what each backbone is) are data in :mod:`skinlesion.models.registry`; weights are
loaded by :mod:`skinlesion.models.pretrained`. This module joins the two, the way timm's
``create_model`` sits on its registry and its pretrained loader.
"""

from __future__ import annotations

import timm
from torch import nn

from skinlesion._params import positive_int, unit_rate
from skinlesion.models.pretrained import load_pretrained, validate_source
from skinlesion.models.registry import get_spec


def create_backbone(
    name: str,
    *,
    num_classes: int,
    pretrained: str = "none",
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    in_chans: int = 3,
) -> nn.Module:
    """Create the timm model of a registered backbone with a ``num_classes`` head.

    ``drop_rate`` is the head dropout and ``drop_path_rate`` the backbone's internal rate
    (stochastic depth, or DenseNet's per-layer dropout); ``None`` takes the spec's defaults.
    ``pretrained`` is ``"none"``, ``"auto"``, ``"hub"``, ``"lite-pip"`` or ``"file:PATH"``
    (see :mod:`skinlesion.models.pretrained`). The resolved weight source is stored on the model
    as ``model.pretrained_source`` for provenance.
    """
    spec = get_spec(name)
    num_classes = positive_int("num_classes", num_classes)
    in_chans = positive_int("in_chans", in_chans)
    validate_source(name, pretrained)
    head_rate = unit_rate("drop_rate", spec.dropout.head_rate if drop_rate is None else drop_rate)
    inner_rate = unit_rate(
        "drop_path_rate", spec.dropout.backbone_rate if drop_path_rate is None else drop_path_rate
    )
    kwargs: dict[str, object] = {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "drop_rate": head_rate,
    }
    if spec.dropout.backbone == "drop_path":
        kwargs["drop_path_rate"] = inner_rate
    elif spec.dropout.backbone == "dropout":
        kwargs["proj_drop_rate"] = inner_rate
    elif inner_rate > 0:
        raise ValueError(
            f"Backbone {name!r} has no stochastic layers inside it, so the 'drop_path_rate' "
            f"parameter must be 0 or None. Got {drop_path_rate!r} instead."
        )
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    model.pretrained_source = load_pretrained(model, name, pretrained)
    return model


__all__ = ["create_backbone"]
