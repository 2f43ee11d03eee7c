"""Mixup and CutMix: what a mixed batch holds, and that the training step uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlesion.errors import ConfigError
from skinlesion.models.factory import create_backbone
from skinlesion.train.config import load_config
from skinlesion.train.losses import build_loss
from skinlesion.train.mixing import cutmix_box, mix_batch
from skinlesion.train.module import LesionClassifier


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    # every image constant at its own index, so each pixel tells which image it came from
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 12, 16).clone()
    meta = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 4).clone()
    return x, meta


def test_cutmix_pastes_a_box_of_the_partner_and_lam_is_the_untouched_area() -> None:
    x, meta = _batch()
    for seed in range(20):
        m = mix_batch(x, meta, cutmix_alpha=1.0, rng=np.random.default_rng(seed))
        assert m.kind == "cutmix"
        for i in range(len(x)):
            own = (m.x[i] == i).float().mean().item()
            partner = int(m.perm[i])
            if partner != i:
                assert own == pytest.approx(m.lam)
                assert set(m.x[i].unique().tolist()) <= {float(i), float(partner)}
        assert torch.allclose(m.meta, meta * m.lam + meta[m.perm] * (1 - m.lam))


def test_cutmix_box_is_clipped_to_the_image() -> None:
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.3, 0.9, 1.0):
        for _ in range(50):
            top, bottom, left, right = cutmix_box(12, 16, lam, rng)
            assert 0 <= top <= bottom <= 12 and 0 <= left <= right <= 16
            assert (bottom - top) * (right - left) <= round(12 * (1 - lam) ** 0.5 + 1) * round(16 * (1 - lam) ** 0.5 + 1)
    top, bottom, left, right = cutmix_box(12, 16, 1.0, rng)
    assert (bottom - top) * (right - left) == 0  # lam 1: nothing pasted


def test_mixup_blends_images_and_metadata_with_one_weight() -> None:
    x, meta = _batch()
    m = mix_batch(x, meta, mixup_alpha=0.4, rng=np.random.default_rng(1))
    assert m.kind == "mixup" and 0.0 <= m.lam <= 1.0
    assert torch.allclose(m.x, x * m.lam + x[m.perm] * (1 - m.lam))
    assert torch.allclose(m.meta, meta * m.lam + meta[m.perm] * (1 - m.lam))


def test_both_on_use_each_about_half_the_time_and_seeded_draws_repeat() -> None:
    x, _ = _batch()
    kinds = [mix_batch(x, mixup_alpha=0.4, cutmix_alpha=1.0, rng=np.random.default_rng(s)).kind for s in range(200)]
    assert 70 < kinds.count("cutmix") < 130
    a = mix_batch(x, mixup_alpha=0.4, cutmix_alpha=1.0, rng=np.random.default_rng(7))
    b = mix_batch(x, mixup_alpha=0.4, cutmix_alpha=1.0, rng=np.random.default_rng(7))
    assert torch.equal(a.x, b.x) and a.lam == b.lam


def test_mix_batch_rejects_no_alpha_and_non_image_input() -> None:
    x, _ = _batch()
    with pytest.raises(ValueError, match="mixup_alpha > 0 or cutmix_alpha > 0"):
        mix_batch(x, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        mix_batch(x[0], mixup_alpha=0.2, rng=np.random.default_rng(0))


def test_config_validates_the_alphas_and_mix_prob() -> None:
    cfg = load_config("tiny", ["train.mixup_alpha=0.2", "train.cutmix_alpha=1.0", "train.mix_prob=0.5"])
    assert (cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.train.mix_prob) == (0.2, 1.0, 0.5)
    with pytest.raises(ConfigError, match="mixup_alpha"):
        load_config("tiny", ["train.mixup_alpha=-1"])
    with pytest.raises(ConfigError, match="mix_prob"):
        load_config("tiny", ["train.mix_prob=1.5"])


def _module(**kw: float) -> LesionClassifier:
    torch.manual_seed(0)
    y = np.arange(8) % 4
    return LesionClassifier(
        create_backbone("test_efficientnet", num_classes=4, pretrained="none"),
        build_loss("weighted_ce", y, 4, power=1.0, gamma=2.0, label_smoothing=0.0),
        lr=1e-2, weight_decay=0.0, backbone_lr_factor=1.0, warmup_epochs=0, min_lr_ratio=1.0, n_classes=4, **kw,
    )


def test_training_step_loss_is_the_lam_weighted_loss_of_both_labels() -> None:
    module = _module(cutmix_alpha=1.0, seed=3)
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.eval()  # no dropout: the forward pass can be repeated exactly
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    loss = module.training_step((x, y, torch.arange(8)), 0)
    rng = np.random.default_rng([3, 0, 0])  # the module's generator: seed 3, rank 0, epoch 0
    assert rng.random() < 1.0  # its draw against mix_prob, then the mix itself
    m = mix_batch(x, cutmix_alpha=1.0, rng=rng)
    with torch.no_grad():
        logits = module(m.x)
        expected = m.lam * module.loss_fn(logits, y) + (1 - m.lam) * module.loss_fn(logits, y[m.perm])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        plain = module.loss_fn(module(x), y).item()
    assert loss.item() != pytest.approx(plain, rel=1e-3)


def test_mixing_is_off_by_default_and_mix_prob_zero_turns_it_off() -> None:
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    for module in (_module(), _module(mixup_alpha=0.4, mix_prob=0.0)):
        module.log = lambda *a, **k: None  # type: ignore[method-assign]
        module.eval()
        loss = module.training_step((x, y, torch.arange(8)), 0)
        with torch.no_grad():
            assert loss.item() == pytest.approx(module.loss_fn(module(x), y).item(), rel=1e-6)


def test_a_resumed_run_mixes_as_the_uninterrupted_run_did_in_that_epoch() -> None:
    """The generator is seeded per epoch: a module that starts at epoch 2 (a resume) draws what one that
    ran epochs 0 and 1 first draws in epoch 2; other epochs draw otherwise."""
    from types import SimpleNamespace

    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4

    def losses(module: LesionClassifier, epochs: list[int]) -> list[float]:
        module.log = lambda *a, **k: None  # type: ignore[method-assign]
        module.eval()
        out = []
        for e in epochs:
            module._trainer = SimpleNamespace(current_epoch=e, global_rank=0)  # what Lightning's trainer says
            out += [module.training_step((x, y, torch.arange(8)), i).item() for i in range(3)]
        return out

    whole = losses(_module(cutmix_alpha=1.0, mixup_alpha=0.4, mix_prob=0.5, seed=3), [0, 1, 2])
    resumed = losses(_module(cutmix_alpha=1.0, mixup_alpha=0.4, mix_prob=0.5, seed=3), [2])
    assert resumed == pytest.approx(whole[6:], rel=1e-6)
    assert whole[:3] != pytest.approx(whole[6:], rel=1e-3)
