"""The rows a model is evaluated on: a split of the lesion-disjoint manifest its members were trained on.

The manifest's hash must equal the one the model records (``checkpoint.json`` ``data.split_hash``,
or ``bundle.json`` ``provenance.split_hash``), so a test split can never hold training images. A
saved bundle reads its own copy of the manifest; a checkpoint (a one-member bundle from
:func:`~skinlesion.ensemble.bundle.bundle_from_checkpoint`) reads the one it was trained with, or
another given explicitly, which is then recorded (``same_split_as_training``).

It lives in ``ensemble`` (not ``evaluation``) because building and calibrating a bundle fit on the
validation rows: :mod:`skinlesion.ensemble.build` and :mod:`skinlesion.evaluation` both read splits
here, and :mod:`skinlesion.evaluation` re-exports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinlesion.data.splits import apply_manifest, read_manifest
from skinlesion.data.table import LesionTable
from skinlesion.ensemble.bundle import MANIFEST, Bundle
from skinlesion.errors import CheckpointError, DataError
from skinlesion.train.config import DataConfig
from skinlesion.train.data import load_table

SPLITS = ("train", "val", "test")


def check_split(split: str) -> str:
    """``split`` if it is one of :data:`SPLITS`, else a ValueError naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"The 'split' parameter must be one of {SPLITS}. Got {split!r} instead.")
    return split


def data_config_from_meta(meta: dict[str, Any], data_root: str | None) -> DataConfig:
    """The dataset a checkpoint was trained on (``data_root`` overrides its root folder)."""
    raw = dict(meta.get("config", {}).get("data", {}))
    if data_root:
        raw["root"] = data_root
    elif raw.get("format") == "synthetic" or not raw.get("root"):
        raw["root"] = meta["data"].get("root")
    return DataConfig.model_validate(raw)


def load_split_table(
    meta: dict[str, Any],
    manifest_path: Path,
    split: str,
    classes: Sequence[str],
    *,
    data_root: str | None = None,
    run_dir: Path | None = None,
    explicit_manifest: bool = False,
    where: str = "checkpoint.json",
    fold: int | None = None,
) -> tuple[LesionTable, dict[str, Any], bool]:
    """Rows of ``split`` in the manifest the model was trained on, labels indexed by ``classes``.

    On a k-fold manifest (no "val" rows) ``split="val"`` means fold ``fold`` (one member's own
    validation fold), or with ``fold=None`` every non-test row: a cross-fitted bundle is validated
    out-of-fold (see :func:`skinlesion.ensemble.build.build_bundle`).

    The manifest's hash must equal ``meta["data"]["split_hash"]`` unless the manifest was given
    explicitly (then ``same_split`` is False and callers record it). Returns ``(table, info, same_split)``.
    """
    check_split(split)
    if not manifest_path.is_file():
        raise CheckpointError(f"Split manifest {manifest_path} (recorded in {where}) is missing")
    man, info = read_manifest(manifest_path)
    expected = meta["data"].get("split_hash")
    if not expected:
        raise CheckpointError(f"{where} records no split hash: cannot verify the split")
    same_split = info["hash"] == expected
    if not same_split and not explicit_manifest:
        raise CheckpointError(f"Manifest {manifest_path} has hash {info['hash']} but the model was trained on {expected}")
    table = load_table(data_config_from_meta(meta, data_root), run_dir or manifest_path.parent)
    if tuple(table.classes) != tuple(classes):
        # The model's class order is authoritative; labels are re-indexed onto it.
        missing = sorted(set(table.classes) - set(classes))
        if missing:
            raise DataError(f"Dataset has classes {missing} that the model does not know ({list(classes)})")
        table.classes = tuple(classes)
    fold = fold if "fold" in man.columns else None
    parts = apply_manifest(table, man, fold=fold)  # one member of a k-fold manifest: its own fold is "val"
    subset = parts.get(split)
    if split == "val" and "fold" in man.columns and fold is None and not len(subset):
        subset = parts["train"]  # a cross-fitted bundle: validation is out-of-fold, every non-test row
    if subset is None or len(subset) == 0:
        raise DataError(f"Split {split!r} of {manifest_path} is empty")
    return subset, info, same_split


@dataclass
class BundleSplit:
    """The rows of one split for a bundle, and where they came from."""

    table: LesionTable
    manifest: Path
    info: dict[str, Any]  # read_manifest's info: hash, group_key, grouped_by_lesion, ...
    same_split: bool  # False only for an explicitly given manifest of another split


def bundle_split(
    bundle: Bundle, split: str, data_root: str | None = None, manifest: str | Path | None = None, *,
    fold: int | None = None,
) -> BundleSplit:
    """The rows of ``split`` in the manifest the bundle's members were trained on (hash checked).

    A saved bundle uses its own copy of the manifest; a checkpoint wrapped by
    :func:`~skinlesion.ensemble.bundle.bundle_from_checkpoint` uses the checkpoint's. ``manifest``
    evaluates on another manifest instead (recorded as ``same_split=False`` when its hash differs).
    ``fold`` (a saved cross-fitted bundle): the split as one member saw it, "train" the other folds and
    "val" fold ``fold``.
    """
    meta = dict(bundle.members[0].meta)
    if bundle.path is not None:
        meta["data"] = {**meta["data"], "split_hash": bundle.spec.provenance.split_hash}
        path, run_dir, where = bundle.path / MANIFEST, bundle.path, f"{bundle.path}/bundle.json"
        # a saved bundle, cross-fitted or not: "val" is the bundle's validation set (unless ``fold`` is given)
    else:  # a bare checkpoint: a k-fold member's validation is its own fold
        ckpt = Path(bundle.spec.members[0].dir)
        path, run_dir, where = (ckpt / meta["data"]["manifest"]).resolve(), ckpt.parent, f"{ckpt}/checkpoint.json"
        fold = (meta.get("config") or {}).get("data", {}).get("fold")
    path = Path(manifest) if manifest is not None else path
    table, info, same = load_split_table(
        meta, path, split, bundle.classes, data_root=data_root, run_dir=run_dir,
        explicit_manifest=manifest is not None, where=where, fold=fold,
    )
    return BundleSplit(table, path, info, same)


def load_bundle_split(bundle: Bundle, split: str, data_root: str | None = None, *, fold: int | None = None) -> LesionTable:
    """The table of :func:`bundle_split` (the bundle's own manifest)."""
    return bundle_split(bundle, split, data_root, fold=fold).table
