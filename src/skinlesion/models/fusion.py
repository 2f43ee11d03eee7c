"""Metadata fusion: a registry backbone's pooled features joined with an MLP embedding of patient
metadata (age, sex, anatomical site) before the classifier.

This is the design of the ISIC 2019 winners (Gessert et al., MethodsX 7, 100864, 2020): a dense
network embeds the metadata vector and its output is concatenated with the CNN's pooled features.
Here the embedding has two ``Linear -> BatchNorm1d -> SiLU`` layers with dropout between them; the
concatenation goes through dropout to one linear classifier.

**Missing metadata.** ``forward(x, meta=None)`` treats ``meta=None`` as "every feature missing" and
uses the encoder's encoding of that pattern (a buffer, ``missing_metadata``). So ``model(x)`` works
wherever a plain classifier is expected (TTA, Grad-CAM, MC dropout, TCAV, ONNX export) and gives the
prediction for an image whose metadata is unknown. Training hides the metadata of random samples
(``model.metadata_dropout``, :func:`hide_metadata`) so that this prediction is a trained one, not an
extrapolation. Table inference (:func:`skinlesion.inference.table_view_logits`) passes the table's
metadata; code paths that only see images pass none.

**Registry compatibility.** The backbone lives under ``backbone.`` (:attr:`backbone_prefix`): the
registry's Grad-CAM target layer and drop-path modules are found there
(:func:`~skinlesion.models.registry.get_target_layer`,
:func:`~skinlesion.models.registry.stochastic_modules`). The backbone is created without head
dropout; the wrapper applies its own functionally, following its own ``training`` flag as timm's
``forward_head`` does, so MC dropout (which sets only the root flag) switches it on and leaves the
BatchNorm layers in eval. ``forward_features``/``forward_head``/``get_classifier`` follow timm's
contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skinlesion.data.metadata import MetadataEncoder
from skinlesion._params import positive_int, unit_rate
from skinlesion.models.factory import create_backbone
from skinlesion.models.registry import get_spec


class MetadataFusionNet(nn.Module):
    """``classifier(dropout([pool(backbone(x)), mlp(meta)]))`` (Gessert et al. 2020).

    Parameters:
        backbone: a timm model without classifier (``num_classes=0``) and without head dropout.
        encoder: the fitted :class:`~skinlesion.data.metadata.MetadataEncoder` whose vectors ``meta``
            holds; kept as ``metadata_encoder`` (not a module: it has no weights).
        num_classes: number of classes.
        hidden: width of both metadata layers.
        drop_rate: dropout between the metadata layers and on the fused features (the head dropout
            MC dropout turns on).
    """

    #: Prefix of the registry backbone's module names inside this model.
    backbone_prefix = "backbone."

    def __init__(
        self, backbone: nn.Module, encoder: MetadataEncoder, num_classes: int, *, hidden: int = 256,
        drop_rate: float = 0.2,
    ) -> None:
        super().__init__()
        positive_int("num_classes", num_classes)
        positive_int("hidden", hidden)
        self.drop_rate = unit_rate("drop_rate", drop_rate)
        missing = torch.as_tensor(encoder.missing_vector(), dtype=torch.float32)  # raises if not fitted
        image_features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.backbone = backbone
        self.metadata_encoder = encoder
        self.meta_in = nn.Sequential(nn.Linear(len(missing), hidden), nn.BatchNorm1d(hidden), nn.SiLU())
        self.meta_out = nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.SiLU())
        self.classifier = nn.Linear(image_features + hidden, num_classes)
        self.register_buffer("missing_metadata", missing)
        self.num_classes = num_classes
        self.num_features = image_features + hidden
        self.hidden = hidden
        self.pretrained_source = getattr(backbone, "pretrained_source", None)

    @property
    def metadata_features(self) -> tuple[str, ...]:
        return self.metadata_encoder.features

    def head_modules(self) -> tuple[nn.Module, ...]:
        """The modules trained from scratch (they get the head learning rate)."""
        return (self.meta_in, self.meta_out, self.classifier)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def _meta(self, meta: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        d = self.missing_metadata.shape[0]
        if meta is None:
            return self.missing_metadata.to(like.dtype).expand(n, d)
        if not isinstance(meta, torch.Tensor) or meta.dim() != 2 or meta.shape[0] != n or meta.shape[1] != d:
            shape = tuple(meta.shape) if isinstance(meta, torch.Tensor) else type(meta).__name__
            raise ValueError(
                f"The 'meta' parameter must be None or a tensor of shape (N, D) = ({n}, {d}) (one encoded "
                f"metadata vector per image, see MetadataEncoder). Got {shape} instead."
            )
        return meta.to(device=like.device, dtype=like.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Fused features (``pre_logits``) or logits from backbone feature maps ``x``."""
        return self.head_from_pooled(self.backbone.forward_head(x, pre_logits=True), pre_logits=pre_logits, meta=meta)

    def head_from_pooled(self, pooled: torch.Tensor, pre_logits: bool = False, meta: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward_head` from the backbone's pooled image features ``(N, F)`` (what
        :func:`logits_and_image_features` returns beside the logits): the metadata branch joins here."""
        m = self._meta(meta, pooled.shape[0], pooled)
        h = F.dropout(self.meta_in(m), self.drop_rate, self.training)
        z = F.dropout(torch.cat([pooled, self.meta_out(h)], dim=1), self.drop_rate, self.training)
        return z if pre_logits else self.classifier(z)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(N, K)`` of images ``x`` ``(N, C, H, W)`` with encoded metadata ``meta`` ``(N, D)``;
        ``meta=None``: all metadata missing."""
        return self.forward_head(self.forward_features(x), meta=meta)

    def encode_metadata(self, records: Sequence[Mapping[str, Any]] | None, n: int) -> torch.Tensor:
        """``(n, D)`` tensor for ``n`` images from records (``None``: all missing), on the model's device."""
        if records is None:
            return self.missing_metadata.expand(n, -1).clone()
        if len(records) != n:
            raise ValueError(f"The 'metadata' parameter must hold one record per image ({n}). Got {len(records)} instead.")
        return torch.from_numpy(self.metadata_encoder.encode(records)).to(self.missing_metadata.device)


def create_fusion_model(
    name: str,
    encoder: MetadataEncoder,
    *,
    num_classes: int,
    pretrained: str = "none",
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    hidden: int = 256,
) -> MetadataFusionNet:
    """A :class:`MetadataFusionNet` around registry backbone ``name``.

    ``drop_rate`` (None: the spec's head rate) is the wrapper's dropout; ``pretrained`` and
    ``drop_path_rate`` are passed to :func:`~skinlesion.models.factory.create_backbone`.
    """
    spec = get_spec(name)
    rate = unit_rate("drop_rate", spec.dropout.head_rate if drop_rate is None else drop_rate)
    backbone = create_backbone(
        name, num_classes=num_classes, pretrained=pretrained, drop_rate=0.0, drop_path_rate=drop_path_rate
    )
    backbone.reset_classifier(0)
    return MetadataFusionNet(backbone, encoder, num_classes, hidden=hidden, drop_rate=rate)


def hide_metadata(meta: torch.Tensor, missing: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``meta`` ``(N, D)`` with the rows of a random fraction ``p`` of samples set to ``missing`` ``(D,)``.

    Metadata dropout for training: the model learns to predict from the image alone as well.
    """
    if p <= 0:
        return meta
    hide = torch.rand(meta.shape[0], 1, device=meta.device, generator=generator) < p
    return torch.where(hide, missing.to(device=meta.device, dtype=meta.dtype).expand_as(meta), meta)


def table_metadata(model: nn.Module, table: Any, *, use: bool = True) -> np.ndarray | None:
    """Encoded metadata ``(N, D)`` of a LesionTable for a fusion model, None for any other model.

    ``use=False`` gives the all-missing encoding for every row (what the model predicts without metadata).
    """
    encoder = getattr(model, "metadata_encoder", None)
    if not isinstance(encoder, MetadataEncoder):
        return None
    if not use:
        return np.tile(encoder.missing_vector(), (len(table), 1))
    return encoder.encode_frame(table.frame)


def metadata_spec(model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint records to rebuild a fusion model (None for other models)."""
    if not isinstance(model, MetadataFusionNet):
        return None
    return {
        "features": list(model.metadata_features),
        "hidden": model.hidden,
        "drop_rate": model.drop_rate,
        "encoder": model.metadata_encoder.to_dict(),
    }


def logits_and_image_features(
    model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One backbone pass: the logits ``model(x, meta)`` ``(N, K)`` (``meta``: a fusion model's encoded
    metadata, None: all missing; ignored by other models) and the pooled **image** features ``(N, D)``
    (a fusion model's backbone features, before the metadata is joined). What the ONNX graphs output
    (:func:`skinlesion.inference.onnx_graph.onnx_program`) and what out-of-distribution scores read
    (:mod:`skinlesion.ood.features`)."""
    maps = model.forward_features(x)
    if isinstance(model, MetadataFusionNet):
        pooled = model.backbone.forward_head(maps, pre_logits=True)  # before the metadata is joined
        logits = model.head_from_pooled(pooled, meta=meta)
    else:
        pooled = model.forward_head(maps, pre_logits=True)
        logits = model.forward_head(maps)
    return logits, pooled.flatten(1)


__all__ = [
    "MetadataFusionNet", "create_fusion_model", "hide_metadata", "logits_and_image_features", "metadata_spec", "table_metadata",
]
