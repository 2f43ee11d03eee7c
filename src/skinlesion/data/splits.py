"""Lesion-disjoint stratified splits and split manifests.

HAM10000 holds several images of one lesion; a split by image puts near-duplicates on both sides
and inflates test scores (Tschandl et al., Sci. Data 5, 180161, 2018; Abhishek et al.,
"Investigating the quality of DermaMNIST and Fitzpatrick17k", 2024). Splits here are by group
(``table.group_key``: lesion, patient, or image when the data has no lesion id), stratified by
label, and reproducible from a seed. A manifest CSV fixes a split; its sidecar JSON holds the
SHA-256 of the canonical CSV so that later code can prove which split it used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinlesion._csv import read_cell, safe_cell
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
BASE_COLUMNS: tuple[str, ...] = ("image_id", "lesion_id", "label")
BY_IMAGE_NOTE = "no lesion id: split by image; images of one lesion may sit on both sides"
_LISTED = 10


def group_ids(table: LesionTable) -> pd.Series:
    """Group id of every row: ``table.frame[table.group_key]``, or the image id where it is missing."""
    f = table.frame
    return f[table.group_key].astype(object).where(f[table.group_key].notna(), f["image_id"]).astype(str)


def _check_fraction(name: str, value: Any, *, allow_zero: bool) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and math.isfinite(float(value)) and (0 < value < 1 or (allow_zero and value == 0)):
        return float(value)
    lo = "0 <=" if allow_zero else "0 <"
    raise ValueError(f"The '{name}' parameter must be a number with {lo} {name} < 1. Got {value!r} instead.")


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        raise ValueError(f"The 'seed' parameter must be an int in [0, 2**32). Got {seed!r} instead.")
    return int(seed)


def _by_image_warning(table: LesionTable) -> None:
    if table.group_key == "image_id":
        logger.warning("%s: %s.", table.source, BY_IMAGE_NOTE)


def make_split(
    table: LesionTable, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42
) -> pd.DataFrame:
    """Train/val/test split, grouped by ``table.group_key`` and stratified by label.

    Each group (lesion) goes whole to one split: groups of each class are shuffled with ``seed``
    and each is put in the split furthest below its target number of images, so per-class fractions
    (in images) come within about one group of the request. A group with mixed labels counts under
    its most frequent label (ties: class order). The result does not depend on the table's row order.

    Returns:
        DataFrame (table row order) with columns image_id, lesion_id (the group id used), label,
        split in {"train", "val", "test"}; ``df.attrs`` holds the parameters for the manifest.
    """
    v = _check_fraction("val_fraction", val_fraction, allow_zero=True)
    t = _check_fraction("test_fraction", test_fraction, allow_zero=False)
    if v + t >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1 to leave a training set. Got {v} + {t} = {v + t}.")
    seed = _check_seed(seed)
    table.labels()  # raises DataError for labels outside table.classes
    _by_image_warning(table)
    groups = group_ids(table)
    labels = table.frame["label"].astype(str)
    counts = pd.crosstab(groups, labels)
    counts = counts[[c for c in table.classes if c in counts.columns]]
    major = counts.idxmax(axis=1)
    sizes = counts.sum(axis=1)
    mixed = counts.index[(counts > 0).sum(axis=1) > 1]
    if len(mixed):
        logger.warning(
            "%d group(s) hold images with different labels; each is assigned by its most frequent label: %s",
            len(mixed),
            list(mixed[:_LISTED]),
        )
    rng = np.random.default_rng(seed)
    share = np.array([1.0 - v - t, v, t])
    active = share > 0
    assign: dict[str, str] = {}
    for c in table.classes:
        gs = major.index[major == c]
        if len(gs) == 0:
            continue
        size = sizes.loc[gs].to_numpy()
        target, cur = share * size.sum(), np.zeros(3)
        for j in rng.permutation(len(gs)):
            deficit = np.where(active, target - cur, -np.inf)
            best = np.flatnonzero(deficit == deficit.max())
            s = int(best[0] if len(best) == 1 else rng.choice(best))
            cur[s] += size[j]
            assign[gs[j]] = SPLITS[s]
    out = pd.DataFrame(
        {
            "image_id": table.frame["image_id"].astype(str).to_numpy(),
            "lesion_id": groups.to_numpy(),
            "label": labels.to_numpy(),
            "split": groups.map(assign).to_numpy(),
        }
    )
    tab = pd.crosstab(out["label"], out["split"])
    for c in tab.index:
        for name, on in zip(SPLITS, active, strict=True):
            if on and tab.loc[c].get(name, 0) == 0:
                logger.warning("Class %s has no image in the %s split (%d image(s) in all).", c, name, tab.loc[c].sum())
    out.attrs = _attrs(table, seed=seed, val_fraction=v, test_fraction=t, n_mixed_groups=len(mixed))
    return out


def _attrs(table: LesionTable, **kw: Any) -> dict[str, Any]:
    return {
        "source": table.source,
        "group_key": table.group_key,
        "classes": list(table.classes),
        "rows_without_lesion_id": table.notes.get("rows_without_lesion_id"),
        **kw,
    }


def make_kfold(table: LesionTable, *, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """K grouped, stratified folds (sklearn ``StratifiedGroupKFold``, shuffled with ``seed``).

    Returns:
        DataFrame (table row order) with columns image_id, lesion_id (group id), label, fold in 0..k-1.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"The 'k' parameter must be an int >= 2. Got {k!r} instead.")
    seed = _check_seed(seed)
    _by_image_warning(table)
    groups = group_ids(table)
    n_groups = groups.nunique()
    if n_groups < k:
        raise ValueError(f"The 'k' parameter must be at most the number of groups ({n_groups}). Got {k}.")
    fold = np.full(len(table), -1, dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(cv.split(np.zeros(len(table)), table.labels(), groups.to_numpy())):
        fold[held] = f
    out = pd.DataFrame(
        {
            "image_id": table.frame["image_id"].astype(str).to_numpy(),
            "lesion_id": groups.to_numpy(),
            "label": table.frame["label"].astype(str).to_numpy(),
            "fold": fold,
        }
    )
    out.attrs = _attrs(table, seed=seed, k=int(k))
    return out


def make_kfold_split(table: LesionTable, *, k: int = 5, test_fraction: float = 0.15, seed: int = 42) -> pd.DataFrame:
    """A held-out test split plus ``k`` folds of the rest: columns image_id, lesion_id, label,
    split in {"train", "test"}, fold (0..k-1 for train rows, -1 for test rows)."""
    base = make_split(table, val_fraction=0.0, test_fraction=test_fraction, seed=seed)
    train_ids = base.loc[base["split"] == "train", "image_id"]
    folds = make_kfold(table.subset(train_ids.tolist()), k=k, seed=seed)
    base["fold"] = (
        base["image_id"].map(dict(zip(folds["image_id"], folds["fold"], strict=True))).fillna(-1).astype(np.int64)
    )
    base.attrs = {**base.attrs, "k": int(k), "val_fraction": None}
    return base


def kfold_keeping_test(table: LesionTable, base: pd.DataFrame, *, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """``k`` lesion-grouped, stratified folds of everything that is not test in ``base`` (a train/val/test
    manifest); its test rows stay exactly as they are, so test numbers stay comparable across the switch
    from one validation split to cross-fitting. Columns as :func:`make_kfold_split`."""
    _check_manifest(base, "base manifest")
    if "split" not in base.columns:
        raise DataError("The base manifest has no 'split' column: it must say which rows are test.")
    test_ids = set(base.loc[base["split"] == "test", "image_id"].astype(str))
    rest = [i for i in base["image_id"].astype(str) if i not in test_ids]
    folds = make_kfold(table.subset(rest), k=k, seed=seed)
    fold_of = dict(zip(folds["image_id"], folds["fold"], strict=True))
    out = base[list(BASE_COLUMNS)].copy()
    out["split"] = np.where(out["image_id"].astype(str).isin(test_ids), "test", "train")
    out["fold"] = out["image_id"].astype(str).map(fold_of).fillna(-1).astype(np.int64)
    out.attrs = {**_attrs(table, seed=seed, k=int(k)), "test_from_manifest_hash": manifest_hash(base)}
    return out


def folds_of(manifest: pd.DataFrame, image_ids: Any) -> np.ndarray:
    """The fold (``-1``: held out) of each of ``image_ids`` in a k-fold manifest; DataError naming an id
    the manifest does not have."""
    if "fold" not in manifest.columns:
        raise DataError("The manifest has no 'fold' column: it is not a k-fold manifest.")
    fold_of = dict(zip(manifest["image_id"].astype(str), manifest["fold"].astype(np.int64), strict=True))
    ids = [str(i) for i in image_ids]
    missing = [i for i in ids if i not in fold_of]
    if missing:
        raise DataError(f"{len(missing)} image id(s) are not in the k-fold manifest, e.g. {missing[:_LISTED]}.")
    return np.asarray([fold_of[i] for i in ids], dtype=np.int64)


def _columns(df: pd.DataFrame) -> list[str]:
    return [c for c in (*BASE_COLUMNS, "split", "fold") if c in df.columns]


def _canonical_csv(df: pd.DataFrame) -> str:
    cols = _columns(df)
    canon = df[cols].copy()
    for c in cols:
        numeric_fold = c == "fold" and pd.api.types.is_numeric_dtype(canon[c])
        canon[c] = canon[c].astype(np.int64).astype(str) if numeric_fold else canon[c].astype(str)
    canon = canon.sort_values("image_id", kind="stable").map(safe_cell)  # ids a spreadsheet would run as formulas escaped
    return canon.to_csv(index=False, lineterminator="\n")


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 (hex) of the canonical manifest CSV: rows sorted by image_id, columns
    image_id, lesion_id, label, split[, fold]. The same split always has the same hash."""
    _check_columns(df, "manifest")
    return hashlib.sha256(_canonical_csv(df).encode("utf-8")).hexdigest()


def _rows(mask: pd.Series | np.ndarray) -> list[int]:
    return [int(i) + 2 for i in np.flatnonzero(np.asarray(mask))[:_LISTED]]  # +2: 1-based, after header


def _check_columns(df: pd.DataFrame, where: str) -> None:
    missing = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing or not ({"split", "fold"} & set(df.columns)):
        raise DataError(
            f"{where} is missing column(s) {missing or ['split or fold']}: expected "
            f"{[*BASE_COLUMNS, 'split']} (and optionally 'fold'), found {list(df.columns)}."
        )
    if df.empty:
        raise DataError(f"{where} has no rows.")


def _check_manifest(df: pd.DataFrame, where: str) -> None:
    """Columns, values and group-disjointness of a manifest; DataError naming what is wrong."""
    _check_columns(df, where)
    for c in ("image_id", "lesion_id", "label"):
        empty = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if empty.any():
            raise DataError(f"{where}: column {c!r} is empty on {int(empty.sum())} row(s), CSV lines {_rows(empty)}.")
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{where}: image ids repeat, e.g. {sorted(set(df.loc[dup, 'image_id']))[:_LISTED]}.")
    if "split" in df.columns:
        bad = ~df["split"].isin(SPLITS)
        if bad.any():
            raise DataError(
                f"{where}: invalid split value(s) {sorted(set(df.loc[bad, 'split'].astype(str)))[:_LISTED]} on "
                f"CSV lines {_rows(bad)}; expected one of {list(SPLITS)}."
            )
        _check_disjoint(df, "split", where)
    if "fold" in df.columns:
        fold = pd.to_numeric(df["fold"], errors="coerce")
        bad = fold.isna() | (fold != np.round(fold)) | (fold < -1)
        if "split" in df.columns:
            bad |= (df["split"] == "train") != (fold >= 0)
        else:
            bad |= fold < 0
        if bad.any():
            raise DataError(
                f"{where}: invalid fold value(s) on CSV lines {_rows(bad)}; expected an int >= 0 for training "
                "rows and -1 for held-out (val/test) rows."
            )
        _check_disjoint(df.assign(fold=fold.astype(np.int64)), "fold", where)


def _check_disjoint(df: pd.DataFrame, col: str, where: str) -> None:
    n = df.groupby("lesion_id")[col].nunique()
    crossing = n.index[n > 1]
    if len(crossing):
        sub = df[df["lesion_id"].isin(crossing[:_LISTED])]
        detail = {g: sorted(map(str, set(s))) for g, s in sub.groupby("lesion_id")[col]}
        raise DataError(
            f"{where}: {len(crossing)} group(s) (lesion_id) sit in more than one {col}, e.g. {detail}; "
            "images of one lesion must stay on one side."
        )


def split_counts(
    df: pd.DataFrame, classes: list[str] | tuple[str, ...] | None = None, by: str = "split"
) -> pd.DataFrame:
    """Images per class (rows) and split or fold (columns)."""
    tab = pd.crosstab(df["label"].astype(str), df[by])
    if classes is not None:
        tab = tab.reindex([c for c in classes if c in tab.index] + [c for c in tab.index if c not in classes])
    if by == "split":
        tab = tab.reindex(columns=[s for s in SPLITS if s in tab.columns])
    return tab.fillna(0).astype(int)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (Path, np.str_)):
        return str(o)
    raise TypeError(f"manifest info value {o!r} of type {type(o).__name__} cannot be written as JSON")


def write_manifest(df: pd.DataFrame, path: str | Path, *, info: dict[str, Any] | None = None) -> str:
    """Write the canonical manifest CSV and a sidecar ``<path without .csv>.json``; return the hash.

    ``info`` (merged over ``df.attrs``, which :func:`make_split` fills) must give ``group_key``;
    the sidecar also records seed, fractions, source, per-split per-class counts and, for a split by
    image, a note saying images of one lesion may sit on both sides. ``sha256sum`` of the CSV equals
    the hash.
    """
    meta = {**df.attrs, **(info or {})}
    if "group_key" not in meta:
        raise ValueError("The 'info' parameter must give 'group_key' (lesion_id, patient_id or image_id).")
    _check_manifest(df, "manifest to write")
    text = _canonical_csv(df)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    by_lesion = meta["group_key"] in ("lesion_id", "patient_id")
    sidecar: dict[str, Any] = {
        "hash": digest,
        "n_images": len(df),
        "n_groups": int(df["lesion_id"].nunique()),
        **{k: meta.get(k) for k in ("seed", "val_fraction", "test_fraction", "k", "source")},
        **{k: v for k, v in meta.items() if k not in ("hash", "counts", "fold_counts", "note", "grouped_by_lesion")},
        "group_key": meta["group_key"],
        "grouped_by_lesion": by_lesion,
    }
    classes = meta.get("classes")
    if "split" in df.columns:
        sidecar["counts"] = {s: col.to_dict() for s, col in split_counts(df, classes).items()}
    if "fold" in df.columns:
        fc = split_counts(df.assign(fold=df["fold"].astype(np.int64)), classes, by="fold")
        sidecar["fold_counts"] = {str(f): col.to_dict() for f, col in fc.items() if int(f) >= 0}
    if not by_lesion:
        sidecar["note"] = BY_IMAGE_NOTE
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    with open(p.with_suffix(".json"), "w", encoding="utf-8") as fh:
        json.dump(sidecar, fh, indent=2, default=_json_default)
        fh.write("\n")
    logger.info("Wrote split manifest %s (sha256 %s).", p, digest)
    return digest


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a manifest and its sidecar; DataError if either is missing, the CSV was edited (hash
    mismatch), a column is missing, a split/fold value is invalid or a group sits in two splits."""
    p = Path(path)
    side = p.with_suffix(".json")
    if not p.is_file():
        raise DataError(f"Split manifest not found: {p}.")
    if not side.is_file():
        raise DataError(
            f"Split manifest {p} has no sidecar {side}; cannot verify it. Write manifests with write_manifest."
        )
    try:
        info = json.loads(side.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"Sidecar {side} is not valid JSON: {exc}.") from None
    if not isinstance(info, dict) or "hash" not in info:
        raise DataError(f"Sidecar {side} has no 'hash' entry; expected the JSON written by write_manifest.")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False).map(read_cell)
    except pd.errors.EmptyDataError:
        raise DataError(f"Split manifest {p} is empty.") from None
    where = f"Split manifest {p}"
    _check_columns(df, where)
    got = manifest_hash(df)
    if got != info["hash"]:
        raise DataError(
            f"{where} was edited after it was written: its content hashes to {got[:16]}..., "
            f"the sidecar {side.name} records {str(info['hash'])[:16]}.... Re-create the split rather than editing it."
        )
    _check_manifest(df, where)
    if "fold" in df.columns:
        df["fold"] = df["fold"].astype(np.int64)
    return df, info


def apply_manifest(
    table: LesionTable, manifest: pd.DataFrame | str | Path, *, fold: int | None = None
) -> dict[str, LesionTable]:
    """Subsets ``{"train", "val", "test"}`` of ``table`` per the manifest (a split may be empty).

    With ``fold=f`` on a k-fold manifest, fold ``f`` is the validation set, the other folds train,
    and rows with split "test" (fold -1) the test set. Raises DataError when manifest image ids are
    missing from the table, labels disagree, or one of the table's groups spans two splits.
    """
    df = read_manifest(manifest)[0] if isinstance(manifest, (str, Path)) else manifest
    _check_manifest(df, "manifest")
    ids = df["image_id"].astype(str)
    table_ids = table.frame["image_id"].astype(str)
    missing = pd.Index(ids).difference(pd.Index(table_ids))
    if len(missing):
        raise DataError(
            f"{len(missing)} image id(s) of the manifest are not in the {table.source} table, e.g. "
            f"{list(missing[:_LISTED])}. Was the manifest made for another dataset, or were rows skipped?"
        )
    if fold is None:
        if "split" not in df.columns:
            raise DataError("The manifest has folds but no 'split' column: pass fold=0..k-1.")
        where = df["split"].astype(str)
    else:
        if "fold" not in df.columns:
            raise DataError(f"The manifest has no 'fold' column, so fold={fold} cannot be applied.")
        folds = df["fold"].astype(np.int64)
        k = int(folds.max()) + 1
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
            raise ValueError(f"The 'fold' parameter must be an int in 0..{k - 1}. Got {fold!r} instead.")
        where = pd.Series(np.where(folds == fold, "val", np.where(folds >= 0, "train", "test")), index=df.index)
    assign = pd.Series(where.to_numpy(), index=ids.to_numpy())
    split_of = table_ids.map(assign)
    extra = int(split_of.isna().sum())
    if extra:
        logger.warning(
            "%d image(s) of the %s table are not in the manifest and belong to no split.", extra, table.source
        )
    lab = pd.Series(df["label"].astype(str).to_numpy(), index=ids.to_numpy())
    in_manifest = split_of.notna().to_numpy()
    differ = table_ids.to_numpy()[
        in_manifest & (table.frame["label"].astype(str).to_numpy() != table_ids.map(lab).to_numpy())
    ]
    if len(differ):
        raise DataError(
            f"{len(differ)} image(s) have a different label in the manifest than in the table, e.g. "
            f"{list(differ[:_LISTED])}. The manifest was made from other labels."
        )
    g = pd.DataFrame({"lesion_id": group_ids(table), "split": split_of}).dropna()
    _check_disjoint(g, "split", f"The manifest applied to the {table.source} table (grouped by {table.group_key})")
    return {s: table.subset((split_of == s).to_numpy()) for s in SPLITS}
