"""Training configuration: YAML presets validated by pydantic (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from skinlesion.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[1] / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Strict):
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    seed: int = 42


class DataConfig(_Strict):
    format: Literal["ham10000", "isic2018", "isic2019", "dermamnist", "folder", "synthetic"] = "ham10000"
    root: str | None = Field(None, description="Dataset folder (ham10000, folder, synthetic output) or npz file.")
    ground_truth: str | None = Field(None, description="ISIC ground-truth CSV (isic2018/isic2019).")
    images: str | None = Field(None, description="ISIC image folder (isic2018/isic2019).")
    metadata: str | None = Field(None, description="Metadata CSV carrying lesion_id (isic2018/isic2019).")
    manifest: str | None = Field(None, description="Split manifest CSV; null = split here and save it.")
    split: SplitConfig = SplitConfig()
    skip_bad: bool = Field(False, description="Leave out bad rows (listed in the run folder) instead of failing.")
    max_train_images: int | None = Field(None, gt=0, description="Stratified subsample of the train split.")
    synthetic_lesions_per_class: int = Field(60, gt=0)
    synthetic_seed: int = 0
    num_workers: int = Field(2, ge=0)
    fold: int | None = Field(
        None, ge=0, description="With a k-fold manifest: validate on this fold, train on the others (test rows stay out)."
    )
    cache: bool = Field(
        False,
        description="Decode every image once into memory (uint8) and augment whole batches as tensors "
        "(data/batch_augment.py) instead of decoding and augmenting image by image.",
    )

    @model_validator(mode="after")
    def _check_sources(self) -> DataConfig:
        if self.split.val_fraction + self.split.test_fraction >= 1.0:
            raise ValueError(
                "data.split.val_fraction + data.split.test_fraction must be < 1; "
                f"got {self.split.val_fraction} + {self.split.test_fraction}"
            )
        if self.format in ("isic2018", "isic2019") and not (self.ground_truth and self.images):
            raise ValueError(f"data.format={self.format!r} needs data.ground_truth and data.images")
        if self.format in ("ham10000", "folder", "dermamnist") and not self.root:
            raise ValueError(f"data.format={self.format!r} needs data.root")
        if self.fold is not None and not self.manifest:
            raise ValueError(f"data.fold={self.fold} needs data.manifest (a k-fold manifest: skinlesion data split --kfold)")
        return self


class ModelConfig(_Strict):
    backbone: str = "tf_efficientnet_lite0"
    pretrained: str = Field("auto", description="none | auto | hub | lite-pip | file:PATH")
    input_size: tuple[int, int] | None = Field(None, description="(H, W); null = the backbone's default.")
    drop_rate: float | None = Field(None, ge=0.0, lt=1.0)
    drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0)
    metadata: list[Literal["age", "sex", "site"]] | None = Field(
        None, description="Patient metadata fused with the image features (age, sex, site); null = image only."
    )
    metadata_dropout: float = Field(
        0.1, ge=0.0, lt=1.0, description="Probability of hiding a training image's metadata (used with model.metadata)."
    )
    metadata_hidden: int = Field(256, gt=0, description="Width of the metadata branch's two layers.")

    @field_validator("input_size")
    @classmethod
    def _positive(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 16 or v[1] < 16):
            raise ValueError(f"model.input_size must be at least 16x16 (H, W); got {v}")
        return v

    @field_validator("metadata", mode="before")
    @classmethod
    def _split_text(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("metadata")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("model.metadata must name at least one of age, sex, site, or be null (image only)")
        repeated = sorted({f for f in v if v.count(f) > 1})
        if repeated:
            raise ValueError(f"model.metadata names {repeated} more than once")
        return [f for f in ("age", "sex", "site") if f in v]


class AugmentConfig(_Strict):
    level: Literal["none", "light", "medium", "strong"] = "medium"


class OptimConfig(_Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    backbone_lr_factor: float = Field(1.0, gt=0, le=1.0, description="Backbone LR = lr * factor (head gets lr).")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    loss: Literal["ce", "weighted_ce", "focal", "logit_adjusted"] = "weighted_ce"
    focal_gamma: float = Field(2.0, ge=0)
    logit_adjust_tau: float = Field(
        1.0, ge=0, description="Strength of the prior in the 'logit_adjusted' loss (Menon et al. 2021): CE(z + tau log prior)."
    )
    class_weight_power: float = Field(0.5, ge=0, le=1, description="Class weight = (1/freq)^power.")
    sampler: Literal["none", "weighted"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(
        0.0, ge=0, description="Mixup (Zhang et al. 2018): blend pairs of training images, lam ~ Beta(a, a); 0 = off."
    )
    cutmix_alpha: float = Field(
        0.0, ge=0, description="CutMix (Yun et al. 2019): paste a box of another image, area ~ Beta(a, a); 0 = off. "
        "With both alphas set, each mixed batch uses one of the two at even odds."
    )
    mix_prob: float = Field(1.0, ge=0, le=1, description="Fraction of training batches mixed (with mixup or CutMix on).")
    early_stopping_patience: int | None = Field(5, gt=0)
    keep: Literal["best", "last"] = Field(
        "best",
        description="Checkpoint to keep: the epoch with the best validation BACC, or the last one (fixed epochs; "
        "the only honest choice when the validation fold's predictions are used as out-of-fold predictions).",
    )
    val_every_n_epochs: int = Field(
        1, gt=0, description="Validate after every n-th epoch only (the final validation pass of the kept weights "
        "always runs); more than 1 needs keep: last and no early stopping, which are what read the validation."
    )
    max_time_minutes: float | None = Field(None, gt=0)
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    gradient_clip_val: float | None = Field(None, gt=0)
    accumulate_grad_batches: int = Field(1, gt=0)
    weights_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Precision of the saved weights (float16: half the size; loaded back as float32)."
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Exponential moving average of the weights (timm ModelEmaV3, with warm-up); "
        "validation and the saved checkpoint use the average. null = off."
    )

    @model_validator(mode="after")
    def _sparse_validation(self) -> OptimConfig:
        if self.val_every_n_epochs > 1 and (self.keep != "last" or self.early_stopping_patience):
            raise ValueError(
                f"train.val_every_n_epochs={self.val_every_n_epochs} needs train.keep=last and "
                f"train.early_stopping_patience=null (got keep={self.keep!r}, early_stopping_patience="
                f"{self.early_stopping_patience!r}): choosing or stopping by validation needs it after every epoch."
            )
        return self


class TrainerConfig(_Strict):
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, gt=0)
    strategy: str = "auto"
    precision: str = Field("32-true", description="'16-mixed'/'bf16-mixed' for AMP on GPU")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; null = leave as is")
    channels_last: bool = Field(False, description="NHWC memory format for the model and its inputs (1.9x on this CPU)")
    keep_freed_memory: bool = Field(False, description="glibc: keep freed activation buffers for reuse (skinlesion._malloc)")


class TrainConfig(_Strict):
    name: str = "run"
    seed: int = 42
    output_dir: str = "runs"
    data: DataConfig = DataConfig(root=None, format="synthetic")
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()

    @model_validator(mode="after")
    def _metadata_batches(self) -> TrainConfig:
        if self.model.metadata and self.train.batch_size < 2:
            raise ValueError(
                "model.metadata needs train.batch_size >= 2 (the metadata branch has BatchNorm layers); "
                f"got {self.train.batch_size}"
            )
        return self


def list_presets() -> list[str]:
    """Names of the bundled YAML presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _resolve(path_or_preset: str | Path) -> Path:
    p = Path(path_or_preset)
    if p.is_file():
        return p
    preset = PRESET_DIR / f"{path_or_preset}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(f"Config {str(path_or_preset)!r} is neither a file nor a preset; presets: {list_presets()}")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override {dotted!r}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.epochs=3", "model.input_size=[96,128]"]`` -> dotted keys with YAML-parsed values."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like section.key=value (e.g. train.epochs=3)")
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def load_config(path_or_preset: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML file or preset name, apply ``section.key=value`` overrides, validate.

    Relative data paths in a file are resolved against the current directory (presets are written
    relative to the repository root, as `make` runs them).
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path_or_preset is not None:
        path = _resolve(path_or_preset)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if not loc:  # a check across sections: its message names the fields
                lines.append(f"  {err['msg']}")
                continue
            lines.append(f"  {loc}: {err['msg']}" + (f" (got {err.get('input')!r})" if err["type"] != "missing" else ""))
        raise ConfigError(f"Invalid config ({source}):\n" + "\n".join(lines)) from None


def dump_config(cfg: TrainConfig) -> dict[str, Any]:
    """JSON/YAML-serialisable dict of the config."""
    return cfg.model_dump(mode="json")
