"""Attention-map configurations: layer fusion, input upscaling, registry defaults, Eigen-CAM's sign.

Tiny backbones and images only: the behaviour, not the quality, of each option is checked here
(quality is measured by bench/faithfulness.py --compare on real data).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlesion.ensemble.members import Member
from skinlesion.explain.cam import METHODS, _signed_projection, compute_cam, ensemble_cam
from skinlesion.explain.faithfulness import mask_fraction, mass_in_mask
from skinlesion.models.factory import create_backbone
from skinlesion.models.registry import get_cam_layers, get_spec, list_backbones

from test_cam import BrightSquareNet, square_batch, square_mask  # same folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - a.min()
    return a / (1e-7 + a.max())


def test_fused_layers_are_the_rescaled_mean_of_each_layers_map() -> None:
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", num_classes=3, pretrained="none")
    x = torch.rand(2, 3, 48, 64)
    a = compute_cam(model, "test_efficientnet", x, class_index=1, method="gradcam", layers="blocks.2")
    b = compute_cam(model, "test_efficientnet", x, class_index=1, method="gradcam", layers="bn2")
    fused = compute_cam(model, "test_efficientnet", x, class_index=1, method="gradcam", layers=("blocks.2", "bn2"))
    assert fused.shape == (2, 48, 64)
    for i in range(2):
        assert not np.allclose(a[i], b[i], atol=1e-2)  # the layers see different things
        np.testing.assert_allclose(fused[i], _minmax((a[i] + b[i]) / 2), atol=5e-3)


def test_a_stride_16_layer_has_more_cells_than_the_stride_32_one() -> None:
    """On a lite-like input the earlier layer's map varies on a finer grid (more distinct blocks)."""
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", num_classes=3, pretrained="none")
    x = torch.rand(1, 3, 96, 128)
    coarse = compute_cam(model, "test_efficientnet", x, class_index=0, method="gradcam", layers="bn2")[0]
    fine = compute_cam(model, "test_efficientnet", x, class_index=0, method="gradcam", layers="blocks.3")[0]
    # the registry's module at stride 32 gives 3x4 cells, blocks.3 (stride 16) 6x8
    row = lambda m: np.unique(np.round(m[:: 16, 8], 4)).size  # noqa: E731
    assert row(fine) > row(coarse)


def test_input_scale_keeps_the_map_size_and_the_evidence() -> None:
    model = BrightSquareNet()
    x = square_batch()
    for scale in (1.0, 2.0):
        cam = compute_cam(model, model.layer4, x, method="gradcam++", input_scale=scale)
        assert cam.shape == (1, 64, 64)
        assert mass_in_mask(cam[0], square_mask()) > 0.7
    with pytest.raises(ValueError, match=r"'input_scale' parameter must be a number in \[1, 4\]. Got 0.5"):
        compute_cam(model, model.layer4, x, input_scale=0.5)


def test_upscaled_input_gives_a_finer_map_of_a_stride_32_layer() -> None:
    torch.manual_seed(0)
    model = create_backbone("test_efficientnet", num_classes=3, pretrained="none")
    x = torch.rand(1, 3, 64, 64)
    one = compute_cam(model, "test_efficientnet", x, class_index=0, method="gradcam", layers="bn2")[0]
    two = compute_cam(model, "test_efficientnet", x, class_index=0, method="gradcam", layers="bn2", input_scale=2.0)[0]
    assert one.shape == two.shape == (64, 64)
    assert not np.allclose(one, two, atol=1e-2)


def test_eigen_cam_sign_follows_the_activation_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytorch_grad_cam.utils.svd_on_activations as svd

    act = np.zeros((1, 3, 4, 4), dtype=np.float32)
    act[0, :, 1:3, 1:3] = np.array([1.0, 2.0, 3.0])[:, None, None]  # energy in the centre
    plain = svd.get_2d_projection
    for flip in (1.0, -1.0):  # whichever sign the SVD picks, the map is positive on the energy
        monkeypatch.setattr(svd, "get_2d_projection", lambda a, f=flip: f * plain(a))
        proj = _signed_projection(act)
        assert proj[0, 1:3, 1:3].min() > 0 > proj[0, 0, 0]


def test_eigen_cam_is_class_agnostic() -> None:
    model = BrightSquareNet()
    x = square_batch()
    a = compute_cam(model, model.layer4, x, class_index=0, method="eigencam")
    b = compute_cam(model, model.layer4, x, class_index=1, method="eigencam")
    np.testing.assert_allclose(a, b)
    assert mass_in_mask(a[0], square_mask()) > 5 * mask_fraction(square_mask())


def test_registry_cam_defaults_are_valid_for_every_backbone() -> None:
    for name in list_backbones(include_testing=True):
        spec = get_spec(name)
        assert spec.cam_method in METHODS
        assert spec.cam_layers and spec.target_layer
    model = create_backbone("test_efficientnet", num_classes=3, pretrained="none")
    assert get_cam_layers(model, "test_efficientnet") == [model.get_submodule("bn2")]
    with pytest.raises(ValueError, match=r"no module 'blocks.9' for the attention map of backbone 'test_efficientnet'"):
        get_cam_layers(model, "test_efficientnet", ("blocks.9",))
    with pytest.raises(ValueError, match=r"'layers' parameter must be None or non-empty module names"):
        get_cam_layers(model, "test_efficientnet", ())


def test_lite_backbones_use_the_measured_default() -> None:
    """The EfficientNet-Lite default is what bench/faithfulness.py --compare chose (see the registry)."""
    from skinlesion.explain.faithfulness_note import config_name, measured_entries

    for name in ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        spec = get_spec(name)
        assert (spec.cam_method, spec.cam_layers) == (get_spec("tf_efficientnet_lite0").cam_method,
                                                      get_spec("tf_efficientnet_lite0").cam_layers)
    chosen = config_name(get_spec("tf_efficientnet_lite0").cam_method, get_spec("tf_efficientnet_lite0").cam_layers)
    lite = [e for e in measured_entries() if e["backbones"] == ["tf_efficientnet_lite0"]]
    assert chosen in {e["config"] for e in lite}


def test_ensemble_default_method_and_layers_come_from_the_registry() -> None:
    torch.manual_seed(0)
    prep = {"input_size": (48, 64), "mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bilinear"}
    member = Member("e", create_backbone("test_efficientnet", num_classes=3, pretrained="none"), prep,
                    "test_efficientnet", 1.0)
    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    res = ensemble_cam([member], [image], class_index=0)
    assert res.method == get_spec("test_efficientnet").cam_method
    assert res.layers == get_spec("test_efficientnet").cam_layers
    fused = ensemble_cam([member], [image], class_index=0, method="layercam", layers=("blocks.3", "bn2"))
    assert fused.layers == ("blocks.3", "bn2") and fused.maps[0].shape == (40, 50)
    assert fused.method == "layercam"
