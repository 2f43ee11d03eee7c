"""The checkpoint format: ``weights.safetensors`` + ``checkpoint.json`` in one folder.

The JSON carries everything needed to use the weights honestly: classes, backbone, preprocessing,
the config, the split manifest and its hash, validation metrics and package versions; for a metadata
fusion model, ``model.metadata`` holds the features, branch width and the fitted metadata encoder.

It sits in ``models`` (below ``train`` and ``ensemble``): training saves checkpoints, bundles load
them, and neither imports the other for it (``skinlesion.train.checkpoint`` re-exports this module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from skinlesion._hashing import sha256_file
from skinlesion.errors import CheckpointError

FORMAT = "skinlesion-checkpoint"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
META = "checkpoint.json"
REQUIRED = ("format", "format_version", "classes", "backbone", "preprocessing", "data", "versions")
REQUIRED_PREPROCESSING = ("input_size", "mean", "std", "interpolation")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode) and its metadata."""

    path: Path
    model: torch.nn.Module
    meta: dict[str, Any]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.meta["preprocessing"]


def save_checkpoint(
    directory: Path, model: torch.nn.Module, meta: dict[str, Any], *, dtype: torch.dtype | None = None
) -> Path:
    """Write weights and metadata into ``directory`` (created). Returns the directory.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors at that precision (half the
    bytes); loading casts them back to the model's dtype.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        meta = {**meta, "weights_dtype": str(dtype).removeprefix("torch.")}
    save_file(state, str(directory / WEIGHTS))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    meta["weights_sha256"] = sha256_file(directory / WEIGHTS)
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=False, default=str))
    return directory


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept the checkpoint folder, its ``checkpoint.json``, or a training run folder."""
    p = Path(path)
    if p.is_file() and p.name == META:
        p = p.parent
    if (p / "checkpoint" / META).is_file():
        p = p / "checkpoint"
    if not p.exists():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist")
    if not (p / META).is_file():
        raise CheckpointError(
            f"{p} is not a skinlesion checkpoint: expected {META} and {WEIGHTS} in it "
            "(or a training run folder containing checkpoint/)"
        )
    return p


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Read and validate ``checkpoint.json``; errors name the missing or inconsistent field."""
    d = resolve_checkpoint_dir(path)
    try:
        meta = json.loads((d / META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{d / META}: not valid JSON ({e})") from e
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{d / META}: missing field(s) {missing}")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{d / META}: field 'format' must be {FORMAT!r}, got {meta['format']!r}")
    if int(meta["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(
            f"{d / META}: format_version {meta['format_version']} is newer than this package supports "
            f"({FORMAT_VERSION}); upgrade skinlesion"
        )
    missing_pre = [k for k in REQUIRED_PREPROCESSING if k not in meta["preprocessing"]]
    if missing_pre:
        raise CheckpointError(f"{d / META}: preprocessing lacks {missing_pre}")
    if not meta["classes"]:
        raise CheckpointError(f"{d / META}: field 'classes' is empty")
    return meta


def _build_model(meta: dict[str, Any], where: Path) -> torch.nn.Module:
    """The untrained model a checkpoint's weights fit: a registry backbone, or a metadata fusion
    model when ``model.metadata`` is recorded (its encoder is rebuilt from the JSON)."""
    from skinlesion.models.factory import create_backbone

    model_meta = meta.get("model", {})
    kwargs = {
        "num_classes": len(meta["classes"]),
        "pretrained": "none",
        "drop_rate": model_meta.get("drop_rate"),
        "drop_path_rate": model_meta.get("drop_path_rate"),
    }
    fusion = model_meta.get("metadata")
    if not fusion:
        return create_backbone(meta["backbone"], **kwargs)
    from skinlesion.data.metadata import MetadataEncoder
    from skinlesion.models.fusion import create_fusion_model

    try:
        encoder = MetadataEncoder.from_dict(fusion["encoder"])
        hidden = fusion["hidden"]
        kwargs["drop_rate"] = fusion.get("drop_rate", kwargs["drop_rate"])  # the rate resolved at training
    except KeyError as e:
        raise CheckpointError(f"{where}: field 'model.metadata' lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: field 'model.metadata' is invalid: {e}") from None
    return create_fusion_model(meta["backbone"], encoder, hidden=hidden, **kwargs)


def load_checkpoint(path: str | Path, *, map_location: str = "cpu", verify: bool = True) -> Checkpoint:
    """Rebuild the backbone from the registry (a metadata fusion model with its fitted metadata
    encoder when the checkpoint has one) and load the weights (eval mode)."""
    d = resolve_checkpoint_dir(path)
    meta = read_checkpoint_meta(d)
    wpath = d / WEIGHTS
    if not wpath.is_file():
        raise CheckpointError(f"{d}: weights file {WEIGHTS} is missing")
    if verify and meta.get("weights_sha256") and sha256_file(wpath) != meta["weights_sha256"]:
        raise CheckpointError(f"{wpath}: sha256 differs from checkpoint.json (file changed or corrupted)")
    model = _build_model(meta, d / META)
    state = load_file(str(wpath), device=map_location)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{wpath}: weights do not fit backbone {meta['backbone']!r}: "
            f"missing {result.missing_keys[:5]} unexpected {result.unexpected_keys[:5]}"
        )
    model.eval()
    return Checkpoint(path=d, model=model, meta=meta)
