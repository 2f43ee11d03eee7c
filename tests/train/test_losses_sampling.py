from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skinlesion.train.losses import FocalLoss, LogitAdjustedLoss, build_loss, class_weights
from skinlesion.train.module import warmup_cosine
from skinlesion.train.sampling import balanced_sampler, stratified_subsample


def test_class_weights_inverse_frequency() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 3, power=1.0)
    assert w[2] == 0  # absent class
    assert w[1] / w[0] == pytest.approx(9.0)
    assert w[:2].mean() == pytest.approx(1.0)
    ws = class_weights(labels, 3, power=0.5)
    assert ws[1] / ws[0] == pytest.approx(3.0)


def test_focal_with_gamma_zero_is_weighted_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    assert FocalLoss(gamma=0.0, weight=w)(logits, y).item() == pytest.approx(
        nn.CrossEntropyLoss(weight=w)(logits, y).item(), rel=1e-5
    )


def test_focal_down_weights_easy_examples() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.2, 0.0]])
    y = torch.tensor([0, 0])
    per_ce = nn.functional.cross_entropy(logits, y, reduction="none")
    fl = FocalLoss(gamma=2.0)
    easy = fl(logits[:1], y[:1]).item() / per_ce[0].item()
    hard = fl(logits[1:], y[1:]).item() / per_ce[1].item()
    assert easy < 0.01 < hard


def test_build_loss_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="'train.loss' parameter must be one of"):
        build_loss("hinge", np.array([0, 1]), 2, power=0.5, gamma=2, label_smoothing=0)


def test_logit_adjusted_loss_is_cross_entropy_of_prior_shifted_logits() -> None:
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    shifted = logits + 0.5 * torch.log(torch.tensor([0.80, 0.15, 0.05]))
    la = build_loss("logit_adjusted", labels, 3, power=1.0, gamma=2.0, label_smoothing=0.1, tau=0.5)
    assert isinstance(la, LogitAdjustedLoss)
    assert la(logits, y).item() == pytest.approx(nn.CrossEntropyLoss(label_smoothing=0.1)(shifted, y).item(), rel=1e-5)
    plain = LogitAdjustedLoss(labels, 3, tau=0.0)
    assert plain(logits, y).item() == pytest.approx(nn.CrossEntropyLoss()(logits, y).item(), rel=1e-6)
    # a class absent from training counts as one image: a finite offset, not -inf
    assert torch.isfinite(LogitAdjustedLoss(np.array([0, 0, 1]), 3).offset).all()


@pytest.mark.parametrize(("kind", "balanced"), [("ce", False), ("logit_adjusted", True)])
def test_logit_adjusted_loss_learns_balanced_logits(kind: str, balanced: bool) -> None:
    """With nothing to tell the classes apart, plain CE learns the class prior (argmax: always the commonest
    class); the logit-adjusted loss learns equal logits: the balanced posterior that BACC rewards."""
    labels = np.array([0] * 90 + [1] * 10)
    loss = build_loss(kind, labels, 2, power=1.0, gamma=2.0, label_smoothing=0.0)
    bias = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([bias], lr=0.5)
    y = torch.as_tensor(labels)
    for _ in range(500):
        opt.zero_grad()
        loss(bias.expand(len(y), 2), y).backward()
        opt.step()
    p = torch.softmax(bias.detach(), 0).numpy()
    assert p == pytest.approx([0.5, 0.5] if balanced else [0.9, 0.1], abs=0.01)


def test_balanced_sampler_evens_out_classes() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    idx = np.array(list(balanced_sampler(labels, power=1.0, seed=1)))
    frac_rare = (labels[idx] == 1).mean()
    assert 0.4 < frac_rare < 0.6


def test_stratified_subsample_keeps_every_class() -> None:
    labels = np.array([0] * 500 + [1] * 40 + [2] * 2)
    keep = stratified_subsample(labels, 100, seed=0)
    assert 95 <= len(keep) <= 105
    assert set(labels[keep]) == {0, 1, 2}
    assert np.array_equal(keep, stratified_subsample(labels, 100, seed=0))


def test_warmup_cosine_schedule_shape() -> None:
    f = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.01) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[110] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
