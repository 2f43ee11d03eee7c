"""Training entry point: one backbone per run, one folder per run, resumable, DDP-ready."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

import skinlesion
from skinlesion._malloc import keep_freed_memory
from skinlesion.data.batch_augment import augment_batch, eval_batch
from skinlesion.data.image_cache import CachedLesionDataset, cache_size, decode_images
from skinlesion.data.loader import LesionDataset
from skinlesion.data.metadata import MetadataEncoder
from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import preprocessing_transform, train_transform
from skinlesion.errors import ConfigError
from skinlesion.inference import predict_table
from skinlesion.metrics.classification import compute_classification_metrics
from skinlesion.models.fusion import create_fusion_model, metadata_spec
from skinlesion.models.factory import create_backbone
from skinlesion.models.registry import data_config
from skinlesion.train.checkpoint import save_checkpoint
from skinlesion.train.config import TrainConfig, dump_config
from skinlesion.train.data import PreparedData, is_worker_process, prepare_data
from skinlesion.train.losses import build_loss
from skinlesion.train.module import LesionClassifier
from skinlesion.train.sampling import balanced_sampler, stratified_subsample

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint_dir: Path | None  # None on DDP worker processes
    val_metrics: dict[str, Any]
    wall_time_s: float


def _versions() -> dict[str, str]:
    import lightning
    import timm

    return {
        "skinlesion": skinlesion.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": sys.version.split()[0],
    }


def _progress_bar():
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    return RichProgressBar() if sys.stdout.isatty() else TQDMProgressBar(refresh_rate=20)


def _wall_clock(t0: float, cap_minutes: float | None = None) -> Any:
    """A Lightning callback that keeps the training's wall time across resumes: the seconds spent up
    to each saved state travel in that state (``last.ckpt``), and a resumed run starts from them.
    Time after the last saved state of an interrupted process (a partial epoch) is not known and not
    counted. With a time cap (``train.max_time_minutes``) it warns after this process's first epoch
    when, at that epoch's pace, the cap will stop the training before its last epoch."""
    from lightning.pytorch.callbacks import Callback

    class WallClock(Callback):
        def __init__(self) -> None:
            self.before = 0.0  # seconds of earlier processes, up to the state this run resumed from
            # [start (Unix time), seconds] of each earlier process, up to that state; a state written
            # before spans were kept has none (its seconds are in ``before`` all the same)
            self.earlier: list[list[float]] = []
            self._epoch_start: float | None = None
            self.forecast: dict[str, Any] | None = None

        def seconds(self) -> float:
            return self.before + time.time() - t0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self._epoch_start = time.time()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if cap_minutes is None or self.forecast is not None or self._epoch_start is None:
                return
            per = time.time() - self._epoch_start  # training and, when it ran, validation of this epoch
            done, planned = trainer.current_epoch + 1, int(trainer.max_epochs)
            need = self.seconds() + (planned - done) * per
            fits = min(planned, done + int(max(0.0, cap_minutes * 60 - self.seconds()) // max(per, 1e-9)))
            self.forecast = {"epoch_minutes": round(per / 60, 2), "minutes_needed": round(need / 60, 1), "epochs_in_cap": fits}
            if fits < planned:
                log.warning("at %.1f min an epoch, %d epochs need ~%.0f min: the %g-min cap (train.max_time_minutes) "
                            "will stop this training after about %d of them", per / 60, planned, need / 60, cap_minutes, fits)

        def state_dict(self) -> dict[str, Any]:
            return {"wall_time_s": self.seconds(), "spans": [*self.earlier, [t0, time.time() - t0]]}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.before = float(state_dict.get("wall_time_s", 0.0))
            self.earlier = [[float(a), float(b)] for a, b in state_dict.get("spans", [])]

    return WallClock()


def _train_table(cfg: TrainConfig, data: PreparedData) -> LesionTable:
    """The training split, subsampled (stratified) when ``data.max_train_images`` is set."""
    train_table = data.splits["train"]
    if cfg.data.max_train_images:
        keep = stratified_subsample(train_table.labels(), cfg.data.max_train_images, seed=cfg.seed)
        train_table = train_table.subset(train_table.frame["image_id"].to_numpy()[keep])
    return train_table


def _metadata_encoder(cfg: TrainConfig, train_table: LesionTable) -> MetadataEncoder | None:
    """The metadata encoder fitted on the training images only; None when ``model.metadata`` is off."""
    if not cfg.model.metadata:
        return None
    absent = [f for f in cfg.model.metadata if f not in train_table.frame.columns]
    if absent:
        raise ConfigError(
            f"model.metadata asks for {absent}, which the {train_table.source} data does not carry "
            f"(data.format={cfg.data.format!r}); drop them or use a dataset with age/sex/site columns"
        )
    try:
        return MetadataEncoder(cfg.model.metadata).fit(train_table)
    except ValueError as e:
        raise ConfigError(f"model.metadata: the training metadata cannot be encoded: {e}") from None


def _loaders(
    cfg: TrainConfig,
    train_table: LesionTable,
    val_table: LesionTable | None,
    pre: dict[str, Any],
    encoder: MetadataEncoder | None = None,
) -> tuple[DataLoader, DataLoader | None]:
    """Per-image pipeline (decode + albumentations in workers), or with ``data.cache`` raw uint8
    images decoded once into memory, augmented as whole batches by the module."""
    labels = train_table.labels()
    nw = 0 if cfg.data.cache else cfg.data.num_workers
    common = {"batch_size": cfg.train.batch_size, "num_workers": nw, "persistent_workers": nw > 0}

    def meta(table: LesionTable) -> np.ndarray | None:
        return None if encoder is None else encoder.encode_frame(table.frame)

    if cfg.data.cache:
        size = cache_size(pre["input_size"])
        threads = cfg.trainer.threads or torch.get_num_threads()

        def dataset(table: LesionTable, tf: Any) -> Any:
            return CachedLesionDataset(table, decode_images(table, size, threads=threads), metadata=meta(table))

        tf_train = tf_eval = None
    else:
        tf_train = train_transform(pre["input_size"], pre["mean"], pre["std"], cfg.augment.level, pre["interpolation"])
        tf_eval = preprocessing_transform(pre)

        def dataset(table: LesionTable, tf: Any) -> Any:
            return LesionDataset(table, tf, metadata=meta(table))

    if cfg.train.sampler == "weighted":
        sampler = balanced_sampler(labels, power=cfg.train.class_weight_power, seed=cfg.seed)
        train = DataLoader(dataset(train_table, tf_train), sampler=sampler, drop_last=True, **common)
    else:
        train = DataLoader(dataset(train_table, tf_train), shuffle=True, drop_last=True, **common)
    val = DataLoader(dataset(val_table, tf_eval), shuffle=False, **common) if val_table is not None and len(val_table) else None
    return train, val


def keep_earlier_log(logs: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing ``metrics.csv`` when a run resumes: move it aside as
    ``metrics.before-resume-N.csv`` (N counts up) so no logged epoch is lost; returns the new path."""
    current = logs / "metrics.csv"
    if not current.is_file():
        return None
    n = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in logs.glob("metrics.before-resume-*.csv")), default=0)
    return current.rename(logs / f"metrics.before-resume-{n}.csv")


def batch_transforms(cfg: TrainConfig, pre: dict[str, Any]) -> tuple[Any, Any]:
    """The (train, eval) functions that turn a uint8 batch into the network's input (``data.cache``)."""
    size, mean, std, level = pre["input_size"], pre["mean"], pre["std"], cfg.augment.level
    return (partial(augment_batch, input_size=size, mean=mean, std=std, level=level),
            partial(eval_batch, input_size=size, mean=mean, std=std))


def train(
    cfg: TrainConfig, *, run_dir: str | Path | None = None, resume: bool = False, extra_callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train one backbone. Writes ``run_dir/checkpoint`` (weights + JSON), ``config.yaml``, the split
    manifest, per-epoch metrics (``metrics.csv``) and Lightning state for ``resume``. ``extra_callbacks``:
    more Lightning callbacks (e.g. the recipe's thread re-share between trainings side by side)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    if logging.getLogger().handlers:  # the application configured logging: no second copy of each line
        logging.getLogger("lightning").handlers.clear()
    # Lightning 2.6 trips over its own torch-pytree deprecation on every fit; not actionable for users.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # The weight EMA (train.ema_decay) is a frozen copy kept in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    t0 = time.time()
    # Deterministic from the arguments: DDP children re-run the same command and must find the same folder.
    run_dir = Path(run_dir or Path(cfg.output_dir) / cfg.name)
    worker = is_worker_process()
    state_dir = run_dir / "lightning"
    last = state_dir / "last.ckpt"
    if not worker:
        if (run_dir / "checkpoint" / "checkpoint.json").exists() and not resume:
            raise ConfigError(f"{run_dir} already holds a finished run; choose another --out or pass --resume")
        if state_dir.exists() and not resume and last.exists():
            raise ConfigError(f"{run_dir} holds an interrupted run; pass --resume to continue it or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dump_config(cfg), sort_keys=False))
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    if cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    data = prepare_data(cfg.data, run_dir)
    classes = data.classes
    dc = data_config(cfg.model.backbone, tuple(cfg.model.input_size) if cfg.model.input_size else None)
    pre = {
        "input_size": list(dc["input_size"]),
        "mean": list(dc["mean"]),
        "std": list(dc["std"]),
        "interpolation": dc["interpolation"],
        "resize": "whole image, no crop",
    }
    train_table = _train_table(cfg, data)
    train_labels = train_table.labels()
    encoder = _metadata_encoder(cfg, train_table)
    train_loader, val_loader = _loaders(cfg, train_table, data.splits.get("val"), pre, encoder)
    if encoder is None:
        model = create_backbone(
            cfg.model.backbone,
            num_classes=len(classes),
            pretrained=cfg.model.pretrained,
            drop_rate=cfg.model.drop_rate,
            drop_path_rate=cfg.model.drop_path_rate,
        )
    else:
        model = create_fusion_model(
            cfg.model.backbone,
            encoder,
            num_classes=len(classes),
            pretrained=cfg.model.pretrained,
            drop_rate=cfg.model.drop_rate,
            drop_path_rate=cfg.model.drop_path_rate,
            hidden=cfg.model.metadata_hidden,
        )
        log.info("Metadata fusion: %s -> %d inputs %s", encoder.features, encoder.n_features, list(encoder.feature_names_))
    loss = build_loss(
        cfg.train.loss,
        train_labels,
        len(classes),
        power=cfg.train.class_weight_power,
        gamma=cfg.train.focal_gamma,
        label_smoothing=cfg.train.label_smoothing,
        tau=cfg.train.logit_adjust_tau,
    )
    batch_train, batch_eval = batch_transforms(cfg, pre)
    module = LesionClassifier(
        model,
        loss,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        backbone_lr_factor=cfg.train.backbone_lr_factor,
        warmup_epochs=cfg.train.warmup_epochs,
        min_lr_ratio=cfg.train.min_lr_ratio,
        n_classes=len(classes),
        metadata_dropout=cfg.model.metadata_dropout if encoder is not None else 0.0,
        train_transform=batch_train,
        eval_transform=batch_eval,
        channels_last=cfg.trainer.channels_last,
        ema_decay=cfg.train.ema_decay,
        mixup_alpha=cfg.train.mixup_alpha,
        cutmix_alpha=cfg.train.cutmix_alpha,
        mix_prob=cfg.train.mix_prob,
        seed=cfg.seed,
    )
    monitor = val_loader is not None and cfg.train.keep == "best"
    ckpt_cb = ModelCheckpoint(
        dirpath=state_dir,
        filename="best",
        monitor="val_bacc" if monitor else None,
        mode="max",
        save_last=True,
        save_top_k=1,
        # keep=last: last.ckpt after every epoch, validated or not (a resume loses at most one epoch)
        save_on_train_epoch_end=None if monitor else True,
    )
    clock = _wall_clock(t0, cfg.train.max_time_minutes)
    callbacks: list[Any] = [ckpt_cb, _progress_bar(), clock, *extra_callbacks]
    if val_loader is not None and cfg.train.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val_bacc", mode="max", patience=cfg.train.early_stopping_patience))
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        max_epochs=cfg.train.epochs,
        check_val_every_n_epoch=cfg.train.val_every_n_epochs,
        max_time={"minutes": cfg.train.max_time_minutes} if cfg.train.max_time_minutes else None,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=cfg.train.limit_val_batches,
        gradient_clip_val=cfg.train.gradient_clip_val,
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        callbacks=callbacks,
        logger=CSVLogger(str(run_dir), name="logs", version=""),
        num_sanity_val_steps=0,
        log_every_n_steps=10,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )
    if resume and not worker:
        keep_earlier_log(run_dir / "logs")
    if resume and not last.exists():
        log.warning("--resume: no %s yet, starting from scratch", last)
    trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume and last.exists() else None)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, None, {}, time.time() - t0)

    best = ckpt_cb.best_model_path
    best_epoch = None
    if best and Path(best).is_file():
        saved = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(saved["state_dict"])
        best_epoch = int(saved["epoch"]) + 1  # 1-based: the epoch whose end produced these weights
    model = module.final_model().cpu().eval().to(memory_format=torch.contiguous_format)
    val_metrics: dict[str, Any] = {}
    if "val" in data.splits and len(data.splits["val"]):
        val_table = data.splits["val"]
        probs = predict_table(model, val_table, pre, batch_size=cfg.train.batch_size * 2, device="cpu")
        val_metrics = compute_classification_metrics(val_table.labels(), probs, classes)
    wall = clock.seconds()  # earlier processes of a resumed run included
    stopped_early = any(isinstance(c, EarlyStopping) and c.stopped_epoch > 0 for c in callbacks)
    model_meta: dict[str, Any] = {
        "drop_rate": cfg.model.drop_rate, "drop_path_rate": cfg.model.drop_path_rate, "pretrained": cfg.model.pretrained,
    }
    if encoder is not None:  # absent for image-only models, so their checkpoint.json is unchanged
        model_meta["metadata"] = {**metadata_spec(model), "metadata_dropout": cfg.model.metadata_dropout}  # type: ignore[dict-item]
    meta = {
        "classes": list(classes),
        "backbone": cfg.model.backbone,
        "model": model_meta,
        "preprocessing": pre,
        "config": dump_config(cfg),
        "data": {
            "source": data.source,
            "format": cfg.data.format,
            "root": str(Path(cfg.data.root).resolve()) if cfg.data.root else None,
            "manifest": os.path.relpath(data.manifest_path, run_dir / "checkpoint"),
            "split_hash": data.manifest_info["hash"],
            "group_key": data.group_key,
            "grouped_by_lesion": data.group_key != "image_id",
            "n_train": len(train_labels),
            "n_val": len(data.splits.get("val", [])),
            "n_test": len(data.splits.get("test", [])),
            "n_skipped": data.n_skipped,
        },
        "validation": val_metrics,
        "training": {
            "seed": cfg.seed,
            "epochs_completed": trainer.current_epoch,
            "best_epoch": best_epoch,
            "best_val_bacc": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
            "stopped_early": stopped_early,
            "epochs_planned": cfg.train.epochs,
            "stopped_at_time_cap": bool(cfg.train.max_time_minutes) and not stopped_early
            and trainer.current_epoch < cfg.train.epochs,
            "wall_time_s": round(wall, 1),
            "wall_time_this_process_s": round(time.time() - t0, 1),
            "earlier_processes": [  # when each earlier process of a resumed run started, and its seconds
                [datetime.fromtimestamp(a, timezone.utc).isoformat(timespec="milliseconds"), round(b, 1)]
                for a, b in clock.earlier
            ],
            "devices": trainer.num_devices,
            "strategy": type(trainer.strategy).__name__,
        },
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ckpt_dir = save_checkpoint(run_dir / "checkpoint", model, meta, dtype=getattr(torch, cfg.train.weights_dtype))
    log.info("Checkpoint written to %s (val BACC %s)", ckpt_dir, val_metrics.get("bacc"))
    return TrainResult(run_dir, ckpt_dir, val_metrics, wall)


def train_seeds(cfg: TrainConfig, seeds: list[int], *, run_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train once per seed (``run_dir/seed-<s>``) and summarise validation metrics as mean ± std."""
    base = Path(run_dir or Path(cfg.output_dir) / cfg.name)
    runs = []
    for s in seeds:
        c = cfg.model_copy(deep=True)
        c.seed = s
        res = train(c, run_dir=base / f"seed-{s}", resume=resume)
        runs.append({"seed": s, "checkpoint": str(res.checkpoint_dir), "val": res.val_metrics})
    summary: dict[str, Any] = {"seeds": seeds, "runs": runs}
    for key in ("bacc", "malignant_bacc", "accuracy", "f1_macro", "auc_macro"):
        vals = [r["val"].get(key) for r in runs if r["val"].get(key) is not None]
        if vals:
            summary[f"val_{key}_mean"] = float(np.mean(vals))
            summary[f"val_{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    if not is_worker_process():
        (base / "seeds_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
