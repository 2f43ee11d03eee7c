"""LightningModule: a timm backbone trained with AdamW, linear warm-up and cosine decay.

Batches are ``(x, y, rows)``, or ``(x, y, rows, meta)`` for a metadata fusion model; in training the
metadata of a random fraction ``metadata_dropout`` of the samples is hidden (set to "missing").

The same code runs on one CPU, one GPU or many (DDP through Lightning's strategies); validation
predictions are gathered across processes and de-duplicated by row before BACC is computed, so the
score does not depend on the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import lightning as L
import numpy as np
import torch
from torch import nn

from skinlesion.metrics.classification import balanced_accuracy
from skinlesion.models.fusion import hide_metadata
from skinlesion.train.mixing import MixedBatch, mix_batch

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` (Loshchilov & Hutter 2017)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class LesionClassifier(L.LightningModule):
    """Classifier over ``classes`` with a given backbone and loss."""

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        backbone_lr_factor: float,
        warmup_epochs: float,
        min_lr_ratio: float,
        n_classes: int,
        metadata_dropout: float = 0.0,
        train_transform: BatchTransform | None = None,
        eval_transform: BatchTransform | None = None,
        channels_last: bool = False,
        ema_decay: float | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.loss_fn = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.backbone_lr_factor = backbone_lr_factor
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        self.n_classes = n_classes
        self.metadata_dropout = metadata_dropout
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.channels_last = channels_last
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.mix_prob = mix_prob if (mixup_alpha > 0 or cutmix_alpha > 0) else 0.0
        self.seed = seed
        self._mix_rng: np.random.Generator | None = None
        self._mix_epoch = -1
        self.ema = None
        if ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=ema_decay, use_warmup=True)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x) if meta is None else self.model(x, meta)

    def final_model(self) -> nn.Module:
        """The weights to save: the moving average when ``ema_decay`` is set, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, ...], dataloader_idx: int) -> tuple[torch.Tensor, ...]:
        """uint8 batches (``data.cache``) are augmented (training) or resized (validation) here, on the
        batch's device; float batches arrive ready. Inputs go NHWC when ``channels_last``."""
        x, *rest = batch
        if x.dtype == torch.uint8:
            tf = self.train_transform if self.trainer.training else self.eval_transform
            if tf is None:
                raise RuntimeError("uint8 image batches need train_transform and eval_transform")
            x = tf(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *rest)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y, _, *rest = batch
        meta = rest[0] if rest else None
        if meta is not None and self.metadata_dropout > 0:  # the model also learns to do without
            meta = hide_metadata(meta, self.model.missing_metadata, self.metadata_dropout)
        mixed = self._mix(x, meta)
        if mixed is None:
            loss = self.loss_fn(self(x, meta), y)
        else:
            logits = self(mixed.x, mixed.meta)
            loss = mixed.lam * self.loss_fn(logits, y) + (1.0 - mixed.lam) * self.loss_fn(logits, y[mixed.perm])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def _mix(self, x: torch.Tensor, meta: torch.Tensor | None) -> MixedBatch | None:
        """Mixup / CutMix on a fraction ``mix_prob`` of the batches (None: this batch stays as it is).
        Each process draws from its own generator, seeded by the run's seed, its rank and the epoch:
        a run resumed at an epoch mixes as the uninterrupted run did in that epoch."""
        if self.mix_prob <= 0:
            return None
        epoch = int(self.current_epoch)
        if self._mix_rng is None or self._mix_epoch != epoch:
            self._mix_rng, self._mix_epoch = np.random.default_rng([self.seed, self.global_rank, epoch]), epoch
        if self._mix_rng.random() >= self.mix_prob:
            return None
        mixed = mix_batch(x, meta, mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha, rng=self._mix_rng)
        if self.channels_last:
            return replace(mixed, x=mixed.x.contiguous(memory_format=torch.channels_last))
        return mixed

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y, rows, *rest = batch
        meta = rest[0] if rest else None
        if self.ema is not None:  # validate the weights that will be saved
            logits = self.ema.module(x) if meta is None else self.ema.module(x, meta)
        else:
            logits = self(x, meta)
        self._val.append((logits.detach().float(), y, rows))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        logits = torch.cat([v[0] for v in self._val])
        y = torch.cat([v[1] for v in self._val])
        rows = torch.cat([v[2] for v in self._val])
        self._val.clear()
        if self.trainer.world_size > 1:
            logits = self.all_gather(logits).reshape(-1, logits.shape[-1])
            y = self.all_gather(y).reshape(-1)
            rows = self.all_gather(rows).reshape(-1)
        # DistributedSampler pads by repeating rows: keep each row once.
        _, first = np.unique(rows.cpu().numpy(), return_index=True)
        logits, y = logits[first], y[first]
        val_loss = nn.functional.cross_entropy(logits, y).item()
        bacc = balanced_accuracy(y.cpu().numpy(), logits.argmax(1).cpu().numpy(), n_classes=self.n_classes)
        # Values are identical on every rank after the gather; no further sync needed.
        self.log("val_loss", val_loss, prog_bar=False, rank_zero_only=False)
        self.log("val_bacc", float(bacc), prog_bar=True, rank_zero_only=False)

    def configure_optimizers(self):  # type: ignore[override]
        if hasattr(self.model, "head_modules"):  # a fusion model: metadata branch and classifier are new
            heads = list(self.model.head_modules())
        else:
            heads = [self.model.get_classifier()] if hasattr(self.model, "get_classifier") else []
        head_ids = {id(p) for h in heads if isinstance(h, nn.Module) for p in h.parameters()}
        decay, no_decay, head_params = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in head_ids:
                head_params.append(p)
            elif p.ndim <= 1 or name.endswith(".bias"):
                no_decay.append(p)
            else:
                decay.append(p)
        blr = self.lr * self.backbone_lr_factor
        groups = [
            {"params": decay, "lr": blr, "weight_decay": self.weight_decay},
            {"params": no_decay, "lr": blr, "weight_decay": 0.0},
            {"params": head_params, "lr": self.lr, "weight_decay": self.weight_decay},
        ]
        opt = torch.optim.AdamW([g for g in groups if g["params"]])
        total = int(self.trainer.estimated_stepping_batches)
        max_epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(round(total * self.warmup_epochs / max_epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: warmup_cosine(s, warmup_steps=warmup, total_steps=total, min_ratio=self.min_lr_ratio),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
