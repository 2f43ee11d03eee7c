from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlesion.inference.tta import (
    D4_VIEWS,
    TTAPolicy,
    apply_view,
    average_views,
    deaugment_maps,
    invert_view,
    parse_views,
    tta_logits,
    tta_logits_loop,
)


def _cnn(k: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, k, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten()
    ).eval()


@pytest.mark.parametrize("view", D4_VIEWS)
@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (2, 3, 5, 7)])
def test_d4_view_and_inverse_return_the_input(view: str, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape)
    assert torch.equal(invert_view(apply_view(x, view), view), x)


def test_d4_views_are_the_eight_distinct_symmetries() -> None:
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    outs = {tuple(apply_view(x, v).flatten().tolist()) for v in D4_VIEWS}
    assert len(outs) == 8
    assert torch.equal(apply_view(x, "rot90"), torch.tensor([[[[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]]]))
    assert torch.equal(apply_view(x, "transverse"), torch.tensor([[[[8.0, 5, 2], [7, 4, 1], [6, 3, 0]]]]))


@pytest.mark.parametrize("hw", [(16, 16), (12, 20)])
def test_batched_tta_equals_per_view_loop(hw: tuple[int, int]) -> None:
    model = _cnn()
    x = torch.randn(3, 3, *hw)
    views = parse_views("d4,zoom:1.2")
    with torch.no_grad():
        a, b = tta_logits(model, x, views), tta_logits_loop(model, x, views)
    assert a.shape == (3, 9, 5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_batched_tta_uses_one_forward_call_per_shape() -> None:
    calls: list[tuple[int, ...]] = []
    model = _cnn()
    model.register_forward_pre_hook(lambda _m, inp: calls.append(tuple(inp[0].shape)))
    with torch.no_grad():
        tta_logits(model, torch.randn(2, 3, 8, 8), D4_VIEWS)
        assert calls == [(16, 3, 8, 8)]
        calls.clear()
        tta_logits(model, torch.randn(2, 3, 8, 10), D4_VIEWS)
    assert sorted(calls) == [(8, 3, 8, 10), (8, 3, 10, 8)]


def test_average_views_prob_and_logit() -> None:
    z = np.log(np.array([[[0.9, 0.1], [0.5, 0.5]]]))
    np.testing.assert_allclose(np.exp(average_views(z, "prob")), [[0.7, 0.3]])
    mean_logit = z.mean(axis=1)
    expected = np.exp(mean_logit) / np.exp(mean_logit).sum()
    np.testing.assert_allclose(np.exp(average_views(z, "logit")), expected)
    with pytest.raises(ValueError, match="'average' parameter must be one of"):
        average_views(z, "median")


def test_deaugment_maps_undoes_each_view() -> None:
    m = torch.rand(2, 6, 8)
    views = list(D4_VIEWS)
    maps = [apply_view(m, v) for v in views]
    np.testing.assert_allclose(deaugment_maps(maps, views), m.numpy(), rtol=1e-6)
    zoomed = apply_view(m, "zoom:2")
    out = deaugment_maps([m, zoomed], ["identity", "zoom:2"])
    assert out.shape == (2, 6, 8)
    np.testing.assert_allclose(out[:, 0, 0], m[:, 0, 0].numpy())  # outside the crop only identity counts


def test_parse_views_and_errors() -> None:
    assert parse_views("flips") == ("identity", "hflip", "vflip")
    assert parse_views("identity, rot90 ,identity") == ("identity", "rot90")
    assert len(parse_views("d4")) == 8
    with pytest.raises(ValueError, match="Unknown TTA view 'spin'"):
        parse_views("identity,spin")
    with pytest.raises(ValueError, match="name no view"):
        parse_views(" , ")
    with pytest.raises(ValueError, match="no exact inverse"):
        invert_view(torch.zeros(1, 1, 4, 4), "zoom:1.5")
    assert TTAPolicy.parse("d4", "logit").to_dict() == {"views": list(D4_VIEWS), "average": "logit"}
    with pytest.raises(ValueError, match="'average' parameter"):
        TTAPolicy(("identity",), "mode")


def test_max_rows_splits_the_views_into_calls_of_whole_views() -> None:
    calls: list[int] = []
    model = _cnn()
    model.register_forward_pre_hook(lambda _m, inp: calls.append(inp[0].shape[0]))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        capped = tta_logits(model, x, D4_VIEWS, max_rows=7)  # 2 views (6 rows) per call
        assert calls == [6, 6, 6, 6]
        calls.clear()
        tta_logits(model, x, D4_VIEWS, max_rows=1)  # at least one whole view per call
        assert calls == [3] * 8
        torch.testing.assert_close(capped, tta_logits_loop(model, x, D4_VIEWS), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'max_rows' parameter must be a positive integer"):
        tta_logits(model, x, D4_VIEWS, max_rows=0)
