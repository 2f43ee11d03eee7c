"""The last step of every reader: resolve the collected problems and build the typed table."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from skinlesion.data.readers import _checks as ck
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

logger = logging.getLogger("skinlesion.data.readers.datasets")

_STRING_COLUMNS = ("image_id", "lesion_id", "label", "path", "patient_id", "sex", "site", "dx_type")


def build_table(
    cols: dict[str, list[Any]],
    *,
    problems: ck.Problems,
    bad_rows: set[int],
    classes: tuple[str, ...],
    source: str,
    group_key: str,
    dataset: str,
    notes: dict[str, Any] | None = None,
    arrays: np.ndarray | None = None,
) -> LesionTable:
    """Resolve problems (raise or skip), keep good rows, type the columns and build the table."""
    skipped = problems.resolve(dataset)
    n = len(cols["image_id"])
    keep = np.array([(i + 1) not in bad_rows for i in range(n)], dtype=bool)
    frame = pd.DataFrame(cols).loc[keep].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"The {dataset} dataset is empty after leaving out {n - int(keep.sum())} bad row(s).")
    for c in _STRING_COLUMNS:
        if c in frame.columns:
            frame[c] = frame[c].replace("", None).astype("string")
    for c in ("sex", "site"):  # HAM10000 writes a missing value as "unknown"
        if c in frame.columns:
            frame[c] = frame[c].mask(frame[c].str.strip().str.lower() == "unknown")
    if "age" in frame.columns:
        frame["age"] = frame["age"].astype(float)
    notes = dict(notes or {})
    if group_key == "lesion_id":
        notes["rows_without_lesion_id"] = int(frame["lesion_id"].isna().sum())
        if notes["rows_without_lesion_id"]:
            logger.warning(
                "%s: %d image(s) have no lesion id; each is its own group when splitting.",
                dataset,
                notes["rows_without_lesion_id"],
            )
    elif group_key == "image_id":
        logger.warning("%s: no lesion id; splits will be by image (images of one lesion may cross splits).", dataset)
    return LesionTable(frame, classes, source, group_key, arrays=arrays, skipped=skipped, notes=notes)
