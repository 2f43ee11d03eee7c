"""Grad-CAM / Grad-CAM++ for single models and weighted ensembles (skinlesion.explain.cam).

A hand-built CNN whose class-0 evidence is exactly where the image is bright checks that the maps
land on the evidence; the registry's test backbones check that the registry's target layers work
with pytorch-grad-cam, on non-square inputs and rotated views.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from skinlesion.ensemble.members import Member
from skinlesion.inference.tta import apply_view, invert_view
from skinlesion.explain.cam import compute_cam, ensemble_cam, overlay_array, overlay_png
from skinlesion.explain.faithfulness import (
    deletion_insertion,
    mask_fraction,
    mass_in_mask,
    model_predict_fn,
    random_baseline,
)
from skinlesion.models.factory import create_backbone

torch.manual_seed(0)
SQUARE = (slice(8, 20), slice(36, 48))  # rows, cols; aligned to the 4x4 pooling blocks


class BrightSquareNet(nn.Module):
    """logit 0 = gain * mean(relu(local brightness - 0.5)), logit 1 = bias: class-0 evidence is the
    bright area. D4-equivariant (symmetric kernel, 4x4 pooling) on sides divisible by 4. The target
    layer is called ``layer4`` so the registry's ``test_resnet`` entry finds it in ensembles."""

    def __init__(self, gain: float = 200.0, bias: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.bn = nn.BatchNorm2d(1)
        self.act = nn.ReLU()
        self.layer4 = nn.AvgPool2d(4)
        self.head = nn.Linear(1, len(bias))
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27.0)
            self.conv.bias.fill_(-0.5)
            self.head.weight.copy_(torch.tensor([[gain], [0.0]]))
            self.head.bias.copy_(torch.tensor(bias))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer4(self.act(self.bn(self.conv(x)))).mean(dim=(2, 3)))


class ConstantNet(BrightSquareNet):
    """Fixed logits (no dependence on the image): for the ensemble's default class."""

    def __init__(self, logits: tuple[float, ...]) -> None:
        super().__init__()
        self.head = nn.Linear(1, len(logits))
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor(logits))
        self.eval()


def square_batch(h: int = 64, w: int = 64) -> torch.Tensor:
    x = torch.zeros(1, 3, h, w)
    x[:, :, SQUARE[0], SQUARE[1]] = 1.0
    return x


def square_mask(h: int = 64, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[SQUARE] = True
    return m


def toy_member(name: str, size: tuple[int, int], model: nn.Module | None = None, **kw: float) -> Member:
    prep = {"input_size": size, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"}
    return Member(name=name, model=model or BrightSquareNet(), preprocessing=prep, backbone="test_resnet", **kw)


def square_image(h: int = 80, w: int = 80) -> np.ndarray:
    """uint8 RGB with the square at the same relative place as SQUARE in a 64x64 frame."""
    im = np.zeros((h, w, 3), dtype=np.uint8)
    im[h * 8 // 64 : h * 20 // 64, w * 36 // 64 : w * 48 // 64] = 255
    return im


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "hirescam", "eigencam"])
def test_cam_mass_concentrates_on_the_evidence(method: str) -> None:
    model = BrightSquareNet()
    cam = compute_cam(model, model.layer4, square_batch(), method=method)
    assert cam.shape == (1, 64, 64) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    mask = square_mask()
    assert mass_in_mask(cam[0], mask) > 0.75 > 5 * mask_fraction(mask)
    peak = np.unravel_index(np.argmax(cam[0]), cam[0].shape)
    assert mask[peak]


def test_cam_beats_random_maps_on_deletion_and_insertion() -> None:
    model = BrightSquareNet()
    x = square_batch()
    cam = compute_cam(model, model.layer4, x)[0]
    predict = model_predict_fn(model)
    own = deletion_insertion(predict, x[0], cam, 0, steps=16, baseline="zero")
    rnd = random_baseline(predict, x[0], cam, 0, steps=16, baseline="zero", n_random=3, kind="smooth")
    assert own["deletion_auc"] < rnd["deletion_auc"] - 0.2
    assert own["insertion_auc"] > rnd["insertion_auc"] + 0.2


def test_default_class_is_the_argmax_and_cam_of_an_absent_class_is_empty() -> None:
    model = BrightSquareNet()
    x = torch.cat([square_batch(), torch.zeros(1, 3, 64, 64)])
    assert model(x).argmax(-1).tolist() == [0, 1]
    default = compute_cam(model, model.layer4, x)
    explicit = compute_cam(model, model.layer4, x, class_index=[0, 1])
    np.testing.assert_array_equal(default, explicit)
    assert default[0].max() == pytest.approx(1.0, abs=1e-3)
    assert default[1].max() == 0.0  # class 1 has no spatial evidence
    other = compute_cam(model, model.layer4, x, class_index=1)
    assert other.max() == 0.0


def test_model_left_in_eval_with_gradients_and_flags_unchanged() -> None:
    model = BrightSquareNet()
    model.train()
    model.conv.weight.requires_grad_(False)
    sentinel = torch.full_like(model.bn.weight, 7.0)
    model.bn.weight.grad = sentinel
    flags = [p.requires_grad for p in model.parameters()]
    compute_cam(model, model.layer4, square_batch(), views="flips")
    assert not model.training and not model.bn.training
    assert torch.equal(model.bn.running_mean, torch.zeros(1))  # no train-mode forward happened
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.bn.weight.grad is sentinel and model.conv.bias.grad is None
    assert not model.layer4._forward_hooks  # the library's hooks were released


@pytest.mark.parametrize(("h", "w", "views"), [(64, 64, "d4"), (48, 64, "d4"), (48, 64, ("rot90",))])
def test_deaugmented_tta_map_of_an_equivariant_model_matches_identity(h: int, w: int, views: object) -> None:
    model = BrightSquareNet()
    x = square_batch(h, w)
    ref = compute_cam(model, model.layer4, x, views=("identity",))
    tta = compute_cam(model, model.layer4, x, views=views)
    assert tta.shape == (1, h, w)
    np.testing.assert_allclose(tta, ref, atol=1e-4)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_registry_target_layers_work_on_non_square_inputs_and_rot90(name: str) -> None:
    model = create_backbone(name, num_classes=3)
    x = torch.rand(2, 3, 48, 64)
    cls = model(x).argmax(-1).tolist()
    maps = compute_cam(model, name, x, views="d4", method="gradcam")
    assert maps.shape == (2, 48, 64) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    rot = compute_cam(model, name, x, class_index=cls, views=("rot90",))
    by_hand = invert_view(torch.from_numpy(compute_cam(model, name, apply_view(x, "rot90"), class_index=cls)), "rot90")
    assert rot.shape == (2, 48, 64)
    np.testing.assert_allclose(rot, by_hand.numpy(), atol=1e-5)
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_ensemble_weights_one_zero_give_member_zero_exactly() -> None:
    a = Member("r", create_backbone("test_resnet", num_classes=3), _prep((64, 64)), "test_resnet", weight=1.0)
    b = Member("e", create_backbone("test_efficientnet", num_classes=3), _prep((48, 64)), "test_efficientnet", 0.0)
    images = [np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)]
    res = ensemble_cam([a, b], images, class_index=1, views="flips")
    assert res.member_names == ("r", "e") and res.weights.tolist() == [1.0, 0.0]
    assert res.maps[0].shape == (50, 70) and res.member_maps[1][0].shape == (50, 70)
    np.testing.assert_array_equal(res.maps[0], res.member_maps[0][0])
    assert not np.allclose(res.member_maps[0][0], res.member_maps[1][0])
    both = ensemble_cam([a, Member("e", b.model, b.preprocessing, b.backbone, weight=3.0)], images, class_index=1)
    np.testing.assert_allclose(both.maps[0], 0.25 * both.member_maps[0][0] + 0.75 * both.member_maps[1][0], atol=1e-6)


def _prep(size: tuple[int, int]) -> dict:
    return {"input_size": size, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear"}


def test_ensemble_maps_are_resized_to_each_original_image() -> None:
    members = [toy_member("big", (64, 64)), toy_member("small", (32, 32), weight=2.0)]
    images = [square_image(80, 80), square_image(128, 96)]
    res = ensemble_cam(members, images, method="gradcam")
    assert res.class_index.tolist() == [0, 0] and res.method == "gradcam"
    for im, cam in zip(images, res.maps, strict=True):
        assert cam.shape == im.shape[:2]
        mask = im[..., 0] > 0
        assert mass_in_mask(cam, mask) > max(0.5, 10 * mask_fraction(mask))


def test_ensemble_default_class_is_argmax_of_weighted_tempered_probabilities() -> None:
    hot = toy_member("hot", (32, 32), ConstantNet((4.0, 0.0, 0.0)), temperature=4.0)
    cold = toy_member("cold", (32, 32), ConstantNet((0.0, 2.0, 0.0)))
    image = [square_image(40, 40)]
    # equal weights: tempered probs average to class 1 (without the temperature it would be class 0)
    res = ensemble_cam([hot, cold], image)
    expected = 0.5 * torch.softmax(torch.tensor([1.0, 0, 0]), 0) + 0.5 * torch.softmax(torch.tensor([0, 2.0, 0]), 0)
    assert res.class_index.tolist() == [int(expected.argmax())] == [1]
    np.testing.assert_allclose(res.probabilities[0], expected.numpy(), atol=1e-6)
    hot.weight = 3.0
    assert ensemble_cam([hot, cold], image).class_index.tolist() == [0]


def test_given_class_takes_the_probabilities_from_the_cams_own_forward_pass() -> None:
    members = [
        Member("r", create_backbone("test_resnet", num_classes=3), _prep((48, 64)), "test_resnet", weight=1.0),
        Member("e", create_backbone("test_efficientnet", num_classes=3), _prep((48, 64)), "test_efficientnet", 2.0),
    ]
    images = [np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8) for _ in range(2)]
    chosen = ensemble_cam(members, images, method="gradcam")  # no class: a forward pass chooses it
    calls: list[int] = []
    hooks = [m.model.register_forward_hook(lambda *_: calls.append(1)) for m in members]
    given = ensemble_cam(members, images, class_index=chosen.class_index.tolist(), method="gradcam")
    assert len(calls) == len(members)  # one forward pass per member: the CAM's
    np.testing.assert_allclose(given.probabilities, chosen.probabilities, atol=1e-6)
    np.testing.assert_allclose(given.maps[1], chosen.maps[1], atol=1e-6)
    calls.clear()
    # identity not among the views: a separate forward pass gives the identity-view probabilities
    flipped = ensemble_cam(members, images, class_index=0, method="gradcam", views=("hflip",))
    assert len(calls) == 2 * len(members)
    np.testing.assert_allclose(flipped.probabilities, chosen.probabilities, atol=1e-6)
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="class"):
        ensemble_cam(members, images, class_index=3)


def test_overlay_png_is_written_at_the_image_size(tmp_path) -> None:  # noqa: ANN001
    image = np.full((50, 70, 3), 128, dtype=np.uint8)
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[:4, :4] = 1.0
    arr = overlay_array(image, cam)
    assert arr.shape == (50, 70, 3) and arr.dtype == np.uint8
    assert arr[0, 0, 0] > arr[0, 0, 2] and arr[-1, -1, 2] > arr[-1, -1, 0]  # hot = red, cold = blue
    path = overlay_png(image, cam, tmp_path / "sub" / "overlay.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (70, 50) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), arr)


def test_errors_name_the_parameter() -> None:
    model = BrightSquareNet()
    x = square_batch()
    with pytest.raises(ValueError, match=r"'method' parameter must be one of .*gradcam\+\+.*Got 'scorecam'"):
        compute_cam(model, model.layer4, x, method="scorecam")
    with pytest.raises(ValueError, match=r"\[0, K\) with K = 2 classes. Got 5"):
        compute_cam(model, model.layer4, x, class_index=5)
    with pytest.raises(ValueError, match=r"one class per image \(1\). Got 2"):
        compute_cam(model, model.layer4, x, class_index=[0, 1])
    with pytest.raises(ValueError, match=r"'backbone' parameter must be a registry name or a target layer of the model"):
        compute_cam(model, BrightSquareNet().layer4, x)
    with pytest.raises(ValueError, match=r"'x' parameter must be a non-empty tensor of shape \(N, C, H, W\)"):
        compute_cam(model, model.layer4, x[0])
    with pytest.raises(ValueError, match="Unknown TTA view 'rot45'"):
        compute_cam(model, model.layer4, x, views=("rot45",))
    with pytest.raises(ValueError, match="'members' parameter must hold at least one Member"):
        ensemble_cam([], [square_image()])
    with pytest.raises(ValueError, match=r"\[0, K\) with K = 2 classes. Got -1"):
        ensemble_cam([toy_member("a", (32, 32))], [square_image()], class_index=-1)
    with pytest.raises(ValueError, match="member weights must be finite, non-negative and not all zero"):
        ensemble_cam([toy_member("a", (32, 32), weight=0.0)], [square_image()])
    with pytest.raises(ValueError, match="Member 'a': the temperature must be a positive number. Got 0.0"):
        ensemble_cam([toy_member("a", (32, 32), temperature=0.0)], [square_image()])
    with pytest.raises(ValueError, match=r"same number of classes. Got \[2, 3\]"):
        ensemble_cam([toy_member("a", (32, 32)), toy_member("b", (32, 32), ConstantNet((0.0, 1.0, 2.0)))], [square_image()])
    with pytest.raises(ValueError, match=r"'images' parameter must hold RGB uint8 arrays \(H, W, 3\)"):
        ensemble_cam([toy_member("a", (32, 32))], [np.zeros((8, 8), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"'alpha' parameter must be a float in \[0, 1\]. Got 1.5"):
        overlay_array(square_image(), np.zeros((4, 4)), alpha=1.5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_backward_stops_at_the_target_layer_with_the_same_maps(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The maps need the gradients at the target layer only: backward no longer runs through the
    earlier layers (the stem here), and the maps are what the full backward pass gave."""
    import contextlib

    from skinlesion.explain import cam as cam_module

    torch.manual_seed(1)
    model = create_backbone("test_efficientnet", num_classes=3)
    x = torch.rand(2, 3, 48, 64)
    reached: list[int] = []

    def watch(module: nn.Module, args: object, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda g: reached.append(1))

    handle = model.conv_stem.register_forward_hook(watch)
    cut = compute_cam(model, "test_efficientnet", x, method=method, views="flips", layers=["blocks.1"])
    assert reached == []
    monkeypatch.setattr(cam_module, "_backward_stops_at", lambda model, layers: contextlib.nullcontext())
    full = compute_cam(model, "test_efficientnet", x, method=method, views="flips", layers=["blocks.1"])
    assert reached  # the uncut backward pass runs through the stem
    handle.remove()
    np.testing.assert_allclose(cut, full, atol=1e-6)
    assert cut.max() > 0 and not model._forward_pre_hooks and not model.blocks[1]._forward_hooks
