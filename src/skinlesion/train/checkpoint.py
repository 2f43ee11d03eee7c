"""Moved to :mod:`skinlesion.models.checkpoint` (bundles load checkpoints without the training
package); this module keeps the old import path working (``train.run`` saves through it)."""

from skinlesion.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    META,
    REQUIRED,
    REQUIRED_PREPROCESSING,
    WEIGHTS,
    Checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_checkpoint_dir,
    save_checkpoint,
)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "META", "REQUIRED", "REQUIRED_PREPROCESSING", "WEIGHTS", "Checkpoint", "load_checkpoint",
    "read_checkpoint_meta", "resolve_checkpoint_dir", "save_checkpoint",
]
