"""The table every reader returns: one row per image, with labels, lesion ids and image sources.

Readers live in :mod:`skinlesion.data.readers`; splits in :mod:`skinlesion.data.splits`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from skinlesion.errors import DataError

#: Columns every table has.
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "label", "path")

#: Values of ``LesionTable.group_key``.
GROUP_KEYS: tuple[str, ...] = ("lesion_id", "patient_id", "image_id")

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


@dataclass(frozen=True)
class SkippedRow:
    """A row left out by a reader with ``on_error="skip"``, and why."""

    file: str  # the CSV/npz/folder it came from
    row: int | None  # 1-based data row number in that file (header excluded), None if n/a
    image_id: str | None
    reason: str

    def describe(self) -> str:
        """One line naming the file, row, image id and reason."""
        where = self.file if self.row is None else f"{self.file}, row {self.row}"
        who = "" if self.image_id is None else f", image_id {self.image_id!r}"
        return f"{where}{who}: {self.reason}"


@dataclass
class LesionTable:
    """A dataset as a table of images.

    ``frame`` has one row per image with columns ``image_id`` (unique str), ``lesion_id`` (str or
    ``<NA>``), ``label`` (canonical class name), ``path`` (absolute file path, ``<NA>`` for in-memory
    images) and, when the source has them, ``patient_id``, ``age`` (float years), ``sex``, ``site``
    (anatomical site), ``dx_type``, missing values being NA (HAM10000's ``unknown`` included);
    in-memory datasets add an int column ``array_index`` into ``arrays``.

    ``group_key`` names the column that groups images for splitting; a missing value in it means
    the image is its own group (see :func:`skinlesion.data.splits.group_ids`). ``skipped`` lists rows
    a reader left out with ``on_error="skip"``; ``notes`` holds reader facts worth reporting (e.g.
    ``rows_without_lesion_id``).
    """

    frame: pd.DataFrame
    classes: tuple[str, ...]
    source: str
    group_key: str
    arrays: np.ndarray | None = None
    skipped: list[SkippedRow] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        missing = [c for c in REQUIRED_COLUMNS if c not in self.frame.columns]
        if missing:
            raise DataError(
                f"LesionTable frame is missing column(s) {missing}; expected at least "
                f"{list(REQUIRED_COLUMNS)}, found {list(self.frame.columns)}."
            )
        if self.group_key not in GROUP_KEYS or self.group_key not in self.frame.columns:
            raise DataError(
                f"The 'group_key' must be one of {list(GROUP_KEYS)} and a column of the frame. "
                f"Got {self.group_key!r} with columns {list(self.frame.columns)}."
            )
        dup = self.frame["image_id"].duplicated(keep=False)
        if dup.any():
            ids = sorted(set(self.frame.loc[dup, "image_id"]))
            raise DataError(f"LesionTable image ids must be unique; {len(ids)} repeat: {ids[:10]}.")
        if self.arrays is not None and "array_index" not in self.frame.columns:
            raise DataError("LesionTable has 'arrays' but its frame has no 'array_index' column.")

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (
            f"LesionTable(source={self.source!r}, n_images={len(self)}, classes={list(self.classes)}, "
            f"group_key={self.group_key!r}, skipped={len(self.skipped)})"
        )

    def labels(self) -> np.ndarray:
        """Class index (into ``classes``) of every row, shape (N,), int64."""
        codes = pd.Categorical(self.frame["label"].astype(object), categories=list(self.classes)).codes
        if (codes < 0).any():
            bad = sorted(set(self.frame["label"][codes < 0].astype(str)))
            raise DataError(f"Labels {bad} are not in the table's classes {list(self.classes)}.")
        return codes.astype(np.int64)

    def load_image(self, i: int) -> np.ndarray:
        """Image of row ``i`` as an RGB uint8 array of shape (H, W, 3).

        Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted.

        Raises:
            DataError: the file is missing, not an image, truncated or corrupt; names the file.
        """
        row = self.frame.iloc[i]
        if self.arrays is not None and "array_index" in self.frame.columns and not pd.isna(row["array_index"]):
            return array_to_rgb(self.arrays[int(row["array_index"])], what=f"image_id {row['image_id']!r}")
        path = row["path"]
        if pd.isna(path):
            raise DataError(f"Row {i} (image_id {row['image_id']!r}) has neither a file path nor an array.")
        return read_rgb(str(path), image_id=str(row["image_id"]))

    def subset(self, image_ids_or_mask: Iterable[Any] | np.ndarray | pd.Series) -> LesionTable:
        """A table with the selected rows, in this table's order.

        Args:
            image_ids_or_mask: a boolean mask of length ``len(self)``, or image ids (all must exist).
        """
        sel = image_ids_or_mask
        if isinstance(sel, str):
            sel = [sel]
        arr = np.asarray(list(sel) if not isinstance(sel, (np.ndarray, pd.Series)) else sel)
        if arr.dtype == bool:
            if len(arr) != len(self):
                raise ValueError(f"A boolean mask must have length {len(self)} (the table); got {len(arr)}.")
            mask = arr
        else:
            wanted = pd.Index(arr.astype(str))
            missing = wanted.difference(pd.Index(self.frame["image_id"].astype(str)))
            if len(missing):
                raise DataError(
                    f"{len(missing)} image id(s) are not in the table: {list(missing[:10])}"
                    + (" ..." if len(missing) > 10 else "")
                )
            mask = self.frame["image_id"].astype(str).isin(wanted).to_numpy()
        return LesionTable(
            frame=self.frame.loc[mask].reset_index(drop=True),
            classes=self.classes,
            source=self.source,
            group_key=self.group_key,
            arrays=self.arrays,
            skipped=list(self.skipped),
            notes=dict(self.notes),
        )


def array_to_rgb(arr: np.ndarray, *, what: str = "array") -> np.ndarray:
    """A copy of an in-memory image as RGB uint8 (H, W, 3); grayscale (H, W) or (H, W, 1) is repeated."""
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        raise DataError(f"{what}: expected a uint8 image array, got dtype {a.dtype}.")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise DataError(f"{what}: expected an image array of shape (H, W[, 1|3|4]), got {a.shape}.")
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).copy()


def read_rgb(path: str, *, image_id: str | None = None) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3). Raises DataError naming the file and why."""
    who = "" if image_id is None else f" (image_id {image_id!r})"
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"Image file not found: {path}{who}.") from None
    except UnidentifiedImageError:
        raise DataError(f"Cannot read {path}{who}: not an image file or an unsupported format.") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for truncated/corrupt data
        raise DataError(f"Cannot decode {path}{who}: the file is truncated or corrupt ({exc}).") from None


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """RGB uint8 array from a loaded PIL image of any mode; 16-bit values are scaled by 1/257."""
    if im.mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.float64) / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        scale = 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else 1.0
        g = np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's warning; the alpha channel is then dropped
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()
