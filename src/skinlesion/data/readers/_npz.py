"""Reader for DermaMNIST (MedMNIST v2; Yang et al., Sci. Data 10, 41, 2023) ``.npz`` files."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion.classes import DERMAMNIST_CLASSES, ISIC2018_CLASSES
from skinlesion.data.readers import _checks as ck
from skinlesion.data.readers._build import build_table
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

logger = logging.getLogger("skinlesion.data.readers.datasets")

DERMAMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"DermaMNIST file not found: {path} (expected a MedMNIST .npz such as dermamnist.npz).")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"Cannot read {path} as a .npz file: {exc}") from None


def read_dermamnist(npz_path: str | Path, *, split: str = "train", on_error: str = "raise") -> LesionTable:
    """DermaMNIST images held in memory (any size: 28, 64, 128, 224).

    The ``.npz`` has ``{train,val,test}_images`` (N, H, W, 3) uint8 and ``{split}_labels`` (N, 1)
    ints indexing :data:`~skinlesion.classes.DERMAMNIST_CLASSES`; ``classes`` is in canonical order
    (:data:`~skinlesion.classes.ISIC2018_CLASSES`), so ``labels()`` differs from the raw integers.
    ``split="all"`` pools the three and
    keeps the official split in column ``official_split``. DermaMNIST has no lesion id (its official
    split is by image), so the table is grouped by image.
    """
    ck.check_on_error(on_error)
    if split not in (*DERMAMNIST_SPLITS, "all"):
        raise ValueError(f"The 'split' parameter must be one of {[*DERMAMNIST_SPLITS, 'all']}. Got {split!r} instead.")
    path = Path(npz_path)
    data = _load_npz(path)
    wanted = DERMAMNIST_SPLITS if split == "all" else (split,)
    expected = [f"{s}_{k}" for s in wanted for k in ("images", "labels")]
    missing = [k for k in expected if k not in data]
    if missing:
        raise DataError(f"{path} is missing key(s) {missing}: expected {expected}, found {sorted(data)}.")
    problems = ck.Problems(on_error)
    images: list[np.ndarray] = []
    cols: dict[str, list[Any]] = {
        "image_id": [],
        "lesion_id": [],
        "label": [],
        "path": [],
        "array_index": [],
        "official_split": [],
    }
    row0 = 0
    for s in wanted:
        x, y = data[f"{s}_images"], data[f"{s}_labels"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
            raise DataError(f"{path}: {s}_images must be uint8 of shape (N, H, W, 3); got {x.dtype} {x.shape}.")
        y = y.reshape(len(y), -1) if y.ndim == 2 else y.reshape(-1, 1)
        if y.shape != (len(x), 1):
            raise DataError(f"{path}: {s}_labels must have shape ({len(x)}, 1) to match {s}_images; got {y.shape}.")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {s}_labels must be integers; got dtype {y.dtype}.")
        for i, v in enumerate(y[:, 0].tolist()):
            image_id = f"dermamnist_{s}_{i:06d}"
            ok = 0 <= v < len(DERMAMNIST_CLASSES)
            if not ok:
                problems.add(
                    path, row0 + i + 1, image_id, f"{s}_labels[{i}] = {v}; expected 0..{len(DERMAMNIST_CLASSES) - 1}"
                )
            cols["image_id"].append(image_id)
            cols["label"].append(DERMAMNIST_CLASSES[v] if ok else None)
            cols["array_index"].append(row0 + i)
            cols["official_split"].append(s)
        images.append(x)
        row0 += len(x)
    if row0 == 0:
        raise DataError(f"{path} holds no images for split {split!r}.")
    cols["lesion_id"] = [""] * row0
    cols["path"] = [""] * row0
    arrays = images[0] if len(images) == 1 else np.concatenate(images, axis=0)
    present = {c for c in cols["label"] if c is not None}
    table = build_table(
        cols,
        problems=problems,
        bad_rows=problems.bad_rows(path),
        classes=ISIC2018_CLASSES,
        source="dermamnist",
        group_key="image_id",
        dataset=f"DermaMNIST ({path}, split {split!r})",
        arrays=arrays,
    )
    if len(present) < len(DERMAMNIST_CLASSES):
        logger.warning(
            "%s: classes %s have no image in split %r.", path, sorted(set(DERMAMNIST_CLASSES) - present), split
        )
    return table
