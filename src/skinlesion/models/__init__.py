"""CNN backbones (timm) with their preprocessing, Grad-CAM layers, dropout and offline weights;
the optional metadata fusion wrapper."""

from skinlesion.models.fusion import MetadataFusionNet, create_fusion_model
from skinlesion.models.pretrained import LITE_PIP_PACKAGES, load_pretrained
from skinlesion.models.registry import (
    BackboneSpec,
    DropoutSpec,
    backbone_prefix,
    create_backbone,
    data_config,
    get_spec,
    get_target_layer,
    list_backbones,
    stochastic_modules,
)

__all__ = [
    "LITE_PIP_PACKAGES",
    "BackboneSpec",
    "DropoutSpec",
    "MetadataFusionNet",
    "backbone_prefix",
    "create_backbone",
    "create_fusion_model",
    "data_config",
    "get_spec",
    "get_target_layer",
    "list_backbones",
    "load_pretrained",
    "stochastic_modules",
]
