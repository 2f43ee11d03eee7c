from __future__ import annotations

import torch

from skinlesion.models.factory import create_backbone
from skinlesion.train.losses import build_loss
from skinlesion.train.module import LesionClassifier


def test_training_steps_fit_a_small_batch() -> None:
    """The module's loss and optimiser groups actually learn: loss on a fixed batch falls sharply."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 4
    model = create_backbone("test_efficientnet", num_classes=4, pretrained="none")
    module = LesionClassifier(
        model,
        build_loss("weighted_ce", y.numpy(), 4, power=0.5, gamma=2.0, label_smoothing=0.0),
        lr=1e-2, weight_decay=0.0, backbone_lr_factor=1.0, warmup_epochs=0, min_lr_ratio=1.0, n_classes=4,
    )
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    module.train()
    first = None
    for _ in range(40):
        loss = module.loss_fn(module(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        final = module.loss_fn(module(x), y).item()
    assert final < 0.3 * first
