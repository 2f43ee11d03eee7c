"""Reader for a folder of class subfolders (``root/MEL/*.jpg``, ``root/nv/sub/*.png``...)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from skinlesion.classes import CANONICAL, UnknownLabelError, canonical_label, order_classes
from skinlesion.data.readers import _checks as ck
from skinlesion.data.readers._build import build_table
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

logger = logging.getLogger("skinlesion.data.readers.datasets")


def walk_images(folder: Path) -> tuple[list[str], int]:
    """Image files under ``folder`` (recursive, sorted, hidden files/folders ignored) and the
    number of other files ignored."""
    found: list[str] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in ck.IMAGE_EXTENSIONS:
                found.append(os.path.abspath(os.path.join(dirpath, name)))
            else:
                ignored += 1
    return found, ignored


def read_folder(root: str | Path, *, on_error: str = "raise", verify_images: bool = True) -> LesionTable:
    """One subfolder per class (names mapped with ``canonical_label``, e.g. ``mel``, ``MEL``,
    ``melanoma``), images found recursively by extension (.jpg/.jpeg/.png/.bmp/.tif/.tiff, any case).

    ``image_id`` is the path relative to ``root`` without extension (``mel/sub/img1``). There is no
    lesion id, so the table is grouped by image. Hidden files and non-image files are ignored.
    """
    ck.check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root} (expected one subfolder per class).")
    problems = ck.Problems(on_error)
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not class_dirs:
        raise DataError(f"No class subfolders in {root}: expected one folder per class named like {list(CANONICAL)}.")
    paths: list[str] = []
    labels: list[str | None] = []
    reasons: dict[int, str] = {}
    ignored = 0
    for e in entries:  # images lying directly in root belong to no class
        if e.is_file() and not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in ck.IMAGE_EXTENSIONS:
            reasons[len(paths)] = "image is not inside a class folder"
            paths.append(os.path.abspath(e.path))
            labels.append(None)
    for d in class_dirs:
        files, n_other = walk_images(Path(d.path))
        ignored += n_other
        try:
            label: str | None = canonical_label(d.name)
        except UnknownLabelError:
            label = None
        if not files:
            logger.warning("%s: class folder %r holds no images.", root, d.name)
        for f in files:
            if label is None:
                reasons[len(paths)] = f"folder name {d.name!r} is not a known class; expected one of {list(CANONICAL)}"
            paths.append(f)
            labels.append(label)
    if ignored:
        logger.info("%s: ignored %d hidden or non-image file(s).", root, ignored)
    if not paths:
        raise DataError(f"No images in {root}: expected {'/'.join(ck.IMAGE_EXTENSIONS)} files inside class folders.")
    ids = [os.path.splitext(os.path.relpath(p, root))[0].replace(os.sep, "/") for p in paths]
    for k, reason in reasons.items():
        problems.add(root, k + 1, ids[k], reason)
    ck.check_ids(ids, labels, file=root, problems=problems)
    if verify_images:
        ck.verify_headers(paths, ids, file=root, problems=problems)
    bad_rows = problems.bad_rows(root)
    # rows were positions in the file list; a folder has no row numbers to report
    problems.items = [replace(s, row=None) for s in problems.items]
    cols: dict[str, Any] = {"image_id": ids, "lesion_id": [""] * len(ids), "label": labels, "path": paths}
    classes = order_classes({lab for i, lab in enumerate(labels) if lab is not None and (i + 1) not in bad_rows})
    return build_table(
        cols,
        problems=problems,
        bad_rows=bad_rows,
        classes=classes,
        source="folder",
        group_key="image_id",
        dataset=f"folder ({root})",
    )
