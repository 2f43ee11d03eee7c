"""Turn a :class:`DataConfig` into lesion-disjoint train/val/test tables plus their manifest."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinlesion import _csv
from skinlesion.data.readers import load_dataset
from skinlesion.data.splits import apply_manifest, make_split, read_manifest, write_manifest
from skinlesion.data.table import LesionTable
from skinlesion.errors import ConfigError
from skinlesion.train.config import PRESET_DIR, DataConfig

log = logging.getLogger(__name__)
MANIFEST_NAME = "split_manifest.csv"


@dataclass
class PreparedData:
    splits: dict[str, LesionTable]
    classes: tuple[str, ...]
    manifest_path: Path
    manifest_info: dict[str, Any]
    source: str
    group_key: str
    n_skipped: int


def is_worker_process() -> bool:
    """True in a DDP child process (rank > 0), which must not write shared files."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _synthetic_root(cfg: DataConfig, run_dir: Path) -> Path:
    from skinlesion.data.synthetic import write_synthetic_dataset

    root = Path(cfg.root) if cfg.root else run_dir / "synthetic-data"
    if not (root / "HAM10000_metadata.csv").is_file():
        if is_worker_process():
            raise RuntimeError(f"synthetic data expected at {root} (written by rank 0)")
        log.info("Writing synthetic lesions to %s", root)
        write_synthetic_dataset(root, n_lesions_per_class=cfg.synthetic_lesions_per_class, seed=cfg.synthetic_seed)
    return root


def load_table(cfg: DataConfig, run_dir: Path) -> LesionTable:
    """Read the configured dataset (``synthetic`` writes HAM10000-style files first)."""
    on_error = "skip" if cfg.skip_bad else "raise"
    if cfg.format == "synthetic":
        return load_dataset("ham10000", _synthetic_root(cfg, run_dir), on_error=on_error)
    if cfg.format in ("isic2018", "isic2019"):
        return load_dataset(
            cfg.format, cfg.ground_truth, images_dir=cfg.images, metadata_csv=cfg.metadata, on_error=on_error
        )
    return load_dataset(cfg.format, cfg.root, on_error=on_error)


def _write_skipped(table: LesionTable, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = _csv.writer(f)
        w.writerow(["file", "row", "image_id", "reason"])
        for s in table.skipped:
            w.writerow([s.file, s.row, s.image_id, s.reason])


def resolve_manifest(path: str | Path) -> Path:
    """``path`` as given, or a split packaged with skinlesion (``configs/splits/...``)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = PRESET_DIR / p
    if not p.is_absolute() and packaged.is_file():
        return packaged
    raise ConfigError(f"data.manifest {str(path)!r} is neither a file nor a packaged split under {PRESET_DIR}")


def prepare_data(cfg: DataConfig, run_dir: Path) -> PreparedData:
    """Load the dataset, then reuse ``cfg.manifest`` or split it (seeded) and save the manifest in the run."""
    run_dir = Path(run_dir)
    table = load_table(cfg, run_dir)
    manifest_path = run_dir / MANIFEST_NAME
    if table.skipped and not is_worker_process():
        _write_skipped(table, run_dir / "skipped_rows.csv")
        log.warning("%d bad rows skipped; listed in %s", len(table.skipped), run_dir / "skipped_rows.csv")
    if cfg.manifest:
        given = resolve_manifest(cfg.manifest)
        manifest, info = read_manifest(given)
        if not is_worker_process() and given.resolve() != manifest_path.resolve():
            write_manifest(manifest, manifest_path, info={k: v for k, v in info.items() if k != "hash"})
    elif manifest_path.is_file():  # resume, or a DDP worker reading rank 0's manifest
        manifest, info = read_manifest(manifest_path)
    else:
        manifest = make_split(
            table, val_fraction=cfg.split.val_fraction, test_fraction=cfg.split.test_fraction, seed=cfg.split.seed
        )
        info = {
            "seed": cfg.split.seed,
            "val_fraction": cfg.split.val_fraction,
            "test_fraction": cfg.split.test_fraction,
            "source": table.source,
            "group_key": table.group_key,
        }
        if not is_worker_process():
            write_manifest(manifest, manifest_path, info=info)
        manifest, info = read_manifest(manifest_path)  # read back: verifies what was written
    if cfg.fold is not None and "fold" not in manifest.columns:
        raise ConfigError(f"data.fold={cfg.fold}: the manifest {cfg.manifest} has no fold column (make one with "
                          "skinlesion data split --kfold K)")
    splits = apply_manifest(table, manifest, fold=cfg.fold)
    if cfg.fold is not None:
        info = {**info, "fold": cfg.fold}
    return PreparedData(
        splits=splits,
        classes=table.classes,
        manifest_path=manifest_path,
        manifest_info=info,
        source=table.source,
        group_key=table.group_key,
        n_skipped=len(table.skipped),
    )
