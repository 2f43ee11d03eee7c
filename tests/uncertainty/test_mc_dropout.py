"""MC dropout: entropy decomposition, dropout mode, batched sampling, ensembles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skinlesion.ensemble.members import Member
from skinlesion.models.factory import create_backbone
from skinlesion.models.registry import data_config, stochastic_modules
from skinlesion.uncertainty import (
    MCResult,
    NotStochasticWarning,
    ensemble_mc_predict,
    expected_entropy,
    mc_dropout_mode,
    mc_dropout_predict,
    mutual_information,
    predictive_entropy,
)

K = 5
LOG2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(name: str, drop_rate: float, drop_path_rate: float = 0.0, seed: int = 0) -> torch.nn.Module:
    """A tiny registry model that behaves like a trained one for these tests.

    The classifier is amplified so dropout visibly moves the softmax, and BatchNorm weights are set
    to 1: timm zero-initialises the last BN of each residual branch (``zero_init_last``), which
    would make drop-path a no-op on a fresh ResNet.
    """
    torch.manual_seed(seed)
    model = create_backbone(name, num_classes=K, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    with torch.no_grad():
        model.get_classifier().weight.mul_(50.0)
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)
    return model.eval()


def _x(n: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _spread(result: MCResult) -> float:
    """Largest standard deviation over samples of any probability."""
    return float(result.samples.std(axis=0).max())


# --------------------------------------------------------------------------- pure functions


def test_decomposition_of_two_confident_disagreeing_samples():
    samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (T=2, N=1, K=2)
    assert predictive_entropy(samples.mean(axis=0)) == pytest.approx([LOG2])
    assert expected_entropy(samples) == pytest.approx([0.0])
    assert mutual_information(samples) == pytest.approx([LOG2])


def test_identical_samples_have_no_epistemic_part():
    p = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    samples = np.stack([p, p, p])
    assert mutual_information(samples) == pytest.approx([0.0, 0.0], abs=1e-12)
    h = -(np.array([0.7, 0.2, 0.1]) * np.log([0.7, 0.2, 0.1])).sum()
    assert expected_entropy(samples) == pytest.approx([h, math.log(3)])
    assert predictive_entropy(p) == pytest.approx([h, math.log(3)])


def test_weighted_samples():
    samples = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    mi = mutual_information(samples, weights=[3, 1])
    assert mi == pytest.approx([-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert expected_entropy(samples, weights=[3, 1]) == pytest.approx([0.0])


def test_result_summary_by_hand():
    samples = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])
    r = MCResult.from_samples(samples)
    assert r.mean_probs == pytest.approx(np.array([[0.7, 0.3]]))
    assert r.predicted_class_variance == pytest.approx([0.04])
    h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))  # noqa: E731
    assert r.predictive_entropy == pytest.approx([h(0.7)])
    assert r.expected_entropy == pytest.approx([(h(0.9) + LOG2) / 2])
    assert r.mutual_information == pytest.approx(r.predictive_entropy - r.expected_entropy)
    assert r.normalised("predictive_entropy") == pytest.approx([h(0.7) / LOG2])
    assert r.max_prob == pytest.approx([0.7]) and r.predictions.tolist() == [0]
    with pytest.raises(ValueError, match="'quantity' parameter must be one of"):
        r.normalised("variance")


@pytest.mark.parametrize(
    ("fn", "arg", "match"),
    [
        (expected_entropy, np.ones((2, 3)) / 3 * np.array([1, 1, 2]), "summing to 1"),
        (mutual_information, np.ones(3) / 3, "'samples' parameter must be a non-empty array"),
        (predictive_entropy, np.array([[1.5, -0.5]]), "finite probabilities >= 0"),
        (predictive_entropy, np.array([[np.nan, 1.0]]), "finite probabilities >= 0"),
    ],
)
def test_pure_function_errors(fn, arg, match):
    with pytest.raises(ValueError, match=match):
        fn(arg)


def test_weight_errors():
    with pytest.raises(ValueError, match="'weights' parameter must be 2 finite non-negative"):
        mutual_information(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), weights=[1, 1, 1])


# --------------------------------------------------------------------------- dropout mode


def _flags(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers()}


@pytest.mark.filterwarnings("error::skinlesion.uncertainty.NotStochasticWarning")
@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_bn_stats_unchanged_and_modes_restored(name):
    model = _model(name, drop_rate=0.5, drop_path_rate=0.3).train()  # train mode: a naive MC would update BN
    model.get_submodule(stochastic_modules(model, name)[0][0]).eval()  # a mixed state to restore
    flags, buffers = _flags(model), _buffers(model)
    result = mc_dropout_predict(model, name, _x(), n_samples=6, seed=0)
    assert result.stochastic
    assert _flags(model) == flags
    after = _buffers(model)
    assert any("running_mean" in k for k in after)
    for key, value in buffers.items():
        assert torch.equal(value, after[key]), key


def test_mode_inside_context_and_restored_after_error():
    name = "test_resnet"
    model = _model(name, drop_rate=0.5, drop_path_rate=0.3)
    flags = _flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        with mc_dropout_mode(model, name) as active:
            assert active[0] == "head" and len(active) > 1
            assert model.training  # the root flag drives timm's functional head dropout
            norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            assert norms and not any(m.training for m in norms)
            assert all(m.training for _, m in stochastic_modules(model, name))
            assert not model.conv1.training and not model.layer1.training
            raise RuntimeError("boom")
    assert _flags(model) == flags
    with mc_dropout_mode(model, name, include_backbone=False) as active:
        assert active == ("head",)
        assert not any(m.training for _, m in stochastic_modules(model, name))


def test_densenet_layer_dropout_without_batchnorm_in_train_mode():
    """DenseNet's dropout lives in DenseLayer modules that also hold BatchNorm layers."""
    model = create_backbone("densenet121", num_classes=K, drop_rate=0.2, drop_path_rate=0.1).eval()
    with mc_dropout_mode(model, "densenet121") as active:
        assert active[0] == "head:head_drop" and "features.denseblock1.denselayer1" in active
        assert model.head_drop.training and model.features.denseblock1.denselayer1.training
        assert not model.features.denseblock1.denselayer1.norm1.training
        assert not model.training
    assert not any(m.training for m in model.modules())


# --------------------------------------------------------------------------- stochasticity


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_head_dropout_is_active_and_copies_differ(name):
    model = _model(name, drop_rate=0.5)
    result = mc_dropout_predict(model, name, _x(), n_samples=8, chunk=None, seed=0)
    assert result.stochastic and result.stochastic_layers == ("head",)
    assert result.samples.shape == (8, 4, K)
    # every copy in the one batched forward got its own mask: no two samples are equal
    flat = result.samples.reshape(8, -1)
    for a in range(8):
        for b in range(a + 1, 8):
            assert not np.allclose(flat[a], flat[b]), (a, b)
    assert result.mutual_information.min() > 1e-4
    assert np.all(result.mutual_information <= result.predictive_entropy + 1e-12)
    assert result.predicted_class_variance.min() > 0


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_no_dropout_is_reported_not_silent(name):
    model = _model(name, drop_rate=0.0, drop_path_rate=0.0)
    with pytest.warns(NotStochasticWarning, match="mutual information"):
        result = mc_dropout_predict(model, name, _x(), n_samples=4)
    assert not result.stochastic and result.stochastic_layers == ()
    assert result.mutual_information == pytest.approx(np.zeros(4), abs=1e-9)
    assert _spread(result) < 1e-6


def test_backbone_drop_path_follows_include_backbone():
    name = "test_resnet"
    model = _model(name, drop_rate=0.0, drop_path_rate=0.5)  # head dropout off
    on = mc_dropout_predict(model, name, _x(), n_samples=8, seed=0)
    assert on.stochastic and on.stochastic_layers == ("layer2.0.drop_path", "layer3.0.drop_path", "layer4.0.drop_path")
    assert _spread(on) > 1e-3
    with pytest.warns(NotStochasticWarning, match="no dropout is active"):
        off = mc_dropout_predict(model, name, _x(), n_samples=8, seed=0, include_backbone=False)
    assert not off.stochastic and _spread(off) < 1e-6


def test_drop_path_outside_residuals_is_not_counted():
    """timm's EfficientNet only applies drop-path on skip connections (``has_skip``)."""
    model = create_backbone("efficientnet_b0", num_classes=K, drop_rate=0.0, drop_path_rate=0.2)
    with mc_dropout_mode(model, "efficientnet_b0") as active:
        assert "blocks.1.1.drop_path" in active and "blocks.1.0.drop_path" not in active
        assert model.get_submodule("blocks.1.1.drop_path").training
        assert not model.get_submodule("blocks.1.0.drop_path").training
    # test_efficientnet has one block per stage, none with a skip: drop-path alone is no MC dropout
    tiny = _model("test_efficientnet", drop_rate=0.0, drop_path_rate=0.5)
    with pytest.warns(NotStochasticWarning, match="no dropout is active"):
        result = mc_dropout_predict(tiny, "test_efficientnet", _x(), n_samples=4)
    assert not result.stochastic and result.stochastic_layers == ()


def test_layers_that_change_nothing_are_reported():
    """A fresh timm ResNet zero-initialises the last BN of each branch, so drop-path is a no-op."""
    torch.manual_seed(0)
    model = create_backbone("test_resnet", num_classes=K, drop_rate=0.0, drop_path_rate=0.5).eval()
    with pytest.warns(NotStochasticWarning, match="did not change any output"):
        result = mc_dropout_predict(model, "test_resnet", _x(), n_samples=4)
    assert not result.stochastic and len(result.stochastic_layers) == 3


def test_seed_reproducible_without_touching_global_rng():
    name = "test_resnet"
    model = _model(name, drop_rate=0.5, drop_path_rate=0.2)
    state = torch.get_rng_state()
    a = mc_dropout_predict(model, name, _x(), n_samples=5, seed=3)
    b = mc_dropout_predict(model, name, _x(), n_samples=5, seed=3)
    c = mc_dropout_predict(model, name, _x(), n_samples=5, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.allclose(a.samples, c.samples)


def test_chunk_of_one_copy_equals_a_loop_of_single_passes():
    name = "test_efficientnet"
    model = _model(name, drop_rate=0.5, drop_path_rate=0.3)
    x, n_samples = _x(), 6
    chunked = mc_dropout_predict(model, name, x, n_samples=n_samples, seed=11, chunk=x.shape[0])
    with torch.random.fork_rng(devices=[]), mc_dropout_mode(model, name), torch.no_grad():
        torch.manual_seed(11)
        loop = torch.stack([torch.softmax(model(x).double(), dim=-1) for _ in range(n_samples)])
    np.testing.assert_allclose(chunked.samples, loop.numpy(), atol=1e-10)


def test_batched_matches_loop_in_distribution():
    name = "test_resnet"
    model = _model(name, drop_rate=0.5)
    x, n_samples = _x(n=3), 300
    batched = mc_dropout_predict(model, name, x, n_samples=n_samples, seed=0, chunk=None)
    looped = mc_dropout_predict(model, name, x, n_samples=n_samples, seed=1, chunk=x.shape[0])
    var_b, var_l = batched.samples.var(axis=0), looped.samples.var(axis=0)
    se = np.sqrt((var_b + var_l) / n_samples)
    assert np.all(np.abs(batched.mean_probs - looped.mean_probs) <= 5 * se + 1e-9)
    assert _spread(batched) > 0.05  # the comparison is not between two constants
    np.testing.assert_allclose(np.sqrt(var_b), np.sqrt(var_l), atol=0.05, rtol=0.25)


def test_temperature_divides_logits():
    name = "test_resnet"
    model = _model(name, drop_rate=0.0, drop_path_rate=0.0)
    x = _x()
    with torch.no_grad():
        expected = torch.softmax(model(x).double() / 4.0, dim=-1).numpy()
    with pytest.warns(NotStochasticWarning):
        result = mc_dropout_predict(model, name, x, n_samples=2, temperature=4.0)
    np.testing.assert_allclose(result.mean_probs, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "'n_samples' parameter must be a positive integer"),
        ({"chunk": 0}, "'chunk' parameter must be a positive integer"),
        ({"temperature": 0.0}, "'temperature' parameter must be a finite number > 0"),
        ({"seed": "a"}, "'seed' parameter must be an integer or None"),
        ({"x": torch.zeros(3, 32, 32)}, r"'x' parameter must be a non-empty tensor \(N, C, H, W\)"),
        ({"backbone": "resnet_9000"}, "Unknown backbone"),
    ],
)
def test_predict_errors(kwargs, match):
    args = {"model": _model("test_resnet", 0.5), "backbone": "test_resnet", "x": _x(), **kwargs}
    with pytest.raises(ValueError, match=match):
        mc_dropout_predict(**args)


# --------------------------------------------------------------------------- ensembles


def _member(name: str, backbone: str, drop_rate: float, weight: float, seed: int) -> Member:
    cfg = data_config(backbone, input_size=(32, 32))
    return Member(name, _model(backbone, drop_rate, seed=seed), cfg, backbone, weight=weight)


def test_ensemble_mixture_includes_member_disagreement():
    members = [_member("a", "test_resnet", 0.0, 3.0, seed=0), _member("b", "test_efficientnet", 0.0, 1.0, seed=1)]
    x = _x()
    with torch.no_grad():
        p = [torch.softmax(m.model(x).double(), dim=-1).numpy() for m in members]
    with pytest.warns(NotStochasticWarning, match="disagreement between members"):
        result = ensemble_mc_predict(members, [x, x], n_samples=3)
    assert result.samples.shape == (6, 4, K)
    np.testing.assert_allclose(result.sample_weights, [0.25] * 3 + [1 / 12] * 3)
    np.testing.assert_allclose(result.mean_probs, 0.75 * p[0] + 0.25 * p[1], atol=1e-6)
    expected_mi = mutual_information(np.stack(p), weights=[3, 1])
    assert expected_mi.min() > 1e-3  # the two random models disagree
    np.testing.assert_allclose(result.mutual_information, expected_mi, atol=1e-6)


def test_ensemble_from_images_with_dropout():
    members = [_member("a", "test_resnet", 0.5, 1.0, seed=0), _member("b", "test_efficientnet", 0.5, 1.0, seed=1)]
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(3)]
    result = ensemble_mc_predict(members, images, n_samples=4, seed=0)
    assert result.stochastic and result.stochastic_layers == ("a:head", "b:head")
    assert result.samples.shape == (8, 3, K)
    by_name = ensemble_mc_predict(members, {m.name: m.preprocess(images) for m in members}, n_samples=4, seed=0)
    np.testing.assert_allclose(by_name.samples, result.samples, atol=1e-6)


@pytest.mark.parametrize(
    ("members_slice", "inputs", "match"),
    [
        (slice(0, 0), [torch.zeros(1, 3, 32, 32)], "'members' parameter must hold at least one Member"),
        (slice(0, 2), torch.zeros(1, 3, 32, 32), "Got a single tensor instead"),
        (slice(0, 2), [torch.zeros(1, 3, 32, 32)], "one tensor per member \\(2\\). Got 1"),
        (slice(0, 2), {"a": torch.zeros(1, 3, 32, 32)}, "Missing: \\['b'\\]"),
        (slice(0, 2), [torch.zeros(1, 3, 32, 32), torch.zeros(2, 3, 32, 32)], "same number of images"),
    ],
)
def test_ensemble_errors(members_slice, inputs, match):
    members = [_member("a", "test_resnet", 0.5, 1.0, seed=0), _member("b", "test_resnet", 0.5, 1.0, seed=1)]
    with pytest.raises(ValueError, match=match):
        ensemble_mc_predict(members[members_slice], inputs, n_samples=2)


def test_ensemble_weight_errors():
    member = _member("a", "test_resnet", 0.5, 0.0, seed=0)
    with pytest.raises(ValueError, match="member weights must be finite, >= 0 and have a positive sum"):
        ensemble_mc_predict([member], [_x()], n_samples=2)
