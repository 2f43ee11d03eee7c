"""CNN backbones (timm): specs with their preprocessing, Grad-CAM layers and dropout (``registry``),
offline weights (``pretrained``), the factory joining them (``factory``), the optional metadata
fusion wrapper (``fusion``), and the checkpoint format (``checkpoint``, imported from there)."""

from skinlesion.models.factory import create_backbone
from skinlesion.models.fusion import MetadataFusionNet, create_fusion_model
from skinlesion.models.pretrained import LITE_PIP_PACKAGES, load_pretrained
from skinlesion.models.registry import (
    BackboneSpec,
    DropoutSpec,
    backbone_prefix,
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
