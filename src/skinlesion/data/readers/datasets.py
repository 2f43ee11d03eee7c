"""Readers for HAM10000, ISIC 2018 Task 3, ISIC 2019, DermaMNIST and class folders.

Every reader returns a :class:`~skinlesion.data.table.LesionTable`. Bad data is never dropped
silently: all problems are collected, then reported in one :class:`~skinlesion.errors.DataError`
(``on_error="raise"``) or left out, listed in ``table.skipped`` and logged (``on_error="skip"``).

References: Tschandl et al., "The HAM10000 dataset", Sci. Data 5, 180161 (2018); Codella et al.,
"Skin lesion analysis toward melanoma detection 2018", arXiv:1902.03368; Combalia et al.,
"BCN20000", arXiv:1908.02288 (ISIC 2019); Yang et al., "MedMNIST v2", Sci. Data 10, 41 (2023).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from skinlesion.classes import CANONICAL, ISIC2018_CLASSES, ISIC2019_COLUMNS, UnknownLabelError, canonical_label
from skinlesion.data.readers import _checks as ck
from skinlesion.data.readers._build import build_table
from skinlesion.data.readers._folder import read_folder
from skinlesion.data.readers._npz import read_dermamnist
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

logger = logging.getLogger(__name__)


def _ages(values: Sequence[str], *, file: Path) -> list[float]:
    age = pd.to_numeric(pd.Series(list(values), dtype=object).replace("", None), errors="coerce")
    bad = int((age.isna() & pd.Series([v != "" for v in values])).sum())
    if bad:
        logger.warning("%s: %d non-numeric age value(s) read as missing.", file, bad)
    return age.astype(float).tolist()


def _image_paths(
    ids: list[str], dirs: list[Path], *, file: Path, problems: ck.Problems, verify: bool
) -> list[str | None]:
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"Image folder not found: {d} (expected a folder of <image_id>.jpg files).")
    paths = ck.resolve_images(ids, set(), dirs, file=file, problems=problems)
    if verify:
        ck.verify_headers(paths, ids, file=file, problems=problems)
    return paths


def _ham_image_dirs(root: Path) -> list[Path]:
    if (root / "images").is_dir():
        return [root / "images"]
    parts = [root / f"HAM10000_images_part_{k}" for k in (1, 2)]
    found = [p for p in parts if p.is_dir()]
    if not found:
        raise DataError(f"No image folder under {root}: expected {root / 'images'} or {parts[0].name}/{parts[1].name}.")
    return found


def read_ham10000(
    root: str | Path,
    *,
    metadata_csv: str | Path | None = None,
    images_dir: str | Path | None = None,
    on_error: str = "raise",
    verify_images: bool = True,
) -> LesionTable:
    """HAM10000 (Tschandl et al. 2018): ``root/HAM10000_metadata.csv`` plus ``root/images/`` (or the
    official ``HAM10000_images_part_1``/``_part_2``). Labels from ``dx``; grouped by ``lesion_id``."""
    ck.check_on_error(on_error)
    root = Path(root)
    meta = Path(metadata_csv) if metadata_csv is not None else root / "HAM10000_metadata.csv"
    dirs = [Path(images_dir)] if images_dir is not None else _ham_image_dirs(root)
    problems = ck.Problems(on_error)
    df = ck.read_csv(
        meta, what="HAM10000 metadata", required=["lesion_id", "image_id", "dx"], id_col="image_id", problems=problems
    )
    ids = df["image_id"].tolist()
    labels = ck.text_labels(df["dx"], ISIC2018_CLASSES, file=meta, ids=ids, column="dx", problems=problems)
    ck.check_ids(ids, labels, file=meta, problems=problems)
    cols: dict[str, list[Any]] = {
        "image_id": ids,
        "lesion_id": df["lesion_id"].tolist(),
        "label": labels,
        "path": _image_paths(ids, dirs, file=meta, problems=problems, verify=verify_images),
    }
    if "age" in df.columns:
        cols["age"] = _ages(df["age"].tolist(), file=meta)
    for src, dst in (("sex", "sex"), ("localization", "site"), ("dx_type", "dx_type")):
        if src in df.columns:
            cols[dst] = df[src].tolist()
    return build_table(
        cols,
        problems=problems,
        bad_rows=problems.bad_rows(meta),
        classes=ISIC2018_CLASSES,
        source="ham10000",
        group_key="lesion_id",
        dataset=f"HAM10000 ({meta})",
    )


def _join_metadata(
    ids: list[str],
    labels: list[str | None],
    meta_path: Path,
    *,
    id_col: str,
    columns: dict[str, str],
    gt_file: Path,
    problems: ck.Problems,
) -> dict[str, list[Any]]:
    """Per ground-truth row: lesion id and the ``columns`` (metadata name -> table name) from a
    metadata CSV. Images absent from it get no lesion id. A ``dx`` column is checked against the label."""
    md = ck.read_csv(meta_path, what="Metadata file", required=[id_col, "lesion_id"], id_col=id_col, problems=problems)
    malformed = problems.bad_rows(meta_path)
    md = md[[(i + 1) not in malformed for i in range(len(md))]]
    dups = md[md[id_col].duplicated(keep=False)]
    conflicting = set(dups.groupby(id_col)["lesion_id"].nunique().loc[lambda s: s > 1].index)
    md = md.drop_duplicates(id_col, keep="first").set_index(id_col)
    known = md.index.intersection(pd.Index(ids))
    absent = len(set(ids)) - len(known)
    if absent:
        logger.warning("%s: %d image(s) of %s are not listed; they get no lesion id.", meta_path, absent, gt_file)
    rows = md.reindex(ids).fillna("")
    for i, v in enumerate(ids):
        if v in conflicting:
            problems.add(gt_file, i + 1, v, f"metadata file {meta_path} lists this image with different lesion ids")
    if "dx" in rows.columns:
        for i, (dx, lab) in enumerate(zip(rows["dx"], labels, strict=True)):
            if dx == "" or lab is None:
                continue
            try:
                same = canonical_label(dx) == lab
            except UnknownLabelError:
                same = False
            if not same:
                problems.add(gt_file, i + 1, ids[i], f"ground truth says {lab} but {meta_path} has dx {dx!r}")
    out: dict[str, list[Any]] = {"lesion_id": rows["lesion_id"].tolist()}
    for src, dst in columns.items():
        if src in rows.columns:
            out[dst] = _ages(rows[src].tolist(), file=meta_path) if dst == "age" else rows[src].tolist()
    return out


def _read_isic(
    gt_path: Path,
    images_dir: Path,
    metadata_csv: str | Path | None,
    *,
    columns: Sequence[str],
    optional: Sequence[str],
    meta_id_col: str,
    meta_columns: dict[str, str],
    source: str,
    name: str,
    on_error: str,
    verify_images: bool,
) -> LesionTable:
    ck.check_on_error(on_error)
    problems = ck.Problems(on_error)
    gt = ck.read_csv(gt_path, what=f"{name} ground truth", required=["image", *columns], id_col="image", problems=problems)
    used = [*columns, *(c for c in optional if c in gt.columns)]
    ids = gt["image"].tolist()
    labels = ck.one_hot_labels(gt, used, file=gt_path, id_col="image", problems=problems)
    ck.check_ids(ids, labels, file=gt_path, problems=problems)
    cols: dict[str, list[Any]] = {
        "image_id": ids,
        "lesion_id": [""] * len(ids),
        "label": labels,
        "path": _image_paths(ids, [images_dir], file=gt_path, problems=problems, verify=verify_images),
    }
    group_key = "image_id"
    if metadata_csv is not None:
        cols.update(
            _join_metadata(
                ids,
                labels,
                Path(metadata_csv),
                id_col=meta_id_col,
                columns=meta_columns,
                gt_file=gt_path,
                problems=problems,
            )
        )
        group_key = "lesion_id"
    present = {lab for lab in labels if lab is not None}
    named = {canonical_label(c) for c in used}
    classes = tuple(c for c in CANONICAL if c in named and (c != "UNK" or "UNK" in present))
    return build_table(
        cols,
        problems=problems,
        bad_rows=problems.bad_rows(gt_path),
        classes=classes,
        source=source,
        group_key=group_key,
        dataset=f"{name} ({gt_path})",
    )


def read_isic2018(
    ground_truth_csv: str | Path,
    images_dir: str | Path,
    *,
    metadata_csv: str | Path | None = None,
    on_error: str = "raise",
    verify_images: bool = True,
) -> LesionTable:
    """ISIC 2018 Task 3 (Codella et al. 2019): one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``.

    The ground truth has no lesion id: pass the HAM10000 metadata CSV (``lesion_id,image_id,...``) as
    ``metadata_csv`` to group by lesion; without it the table is grouped by image.
    """
    return _read_isic(
        Path(ground_truth_csv),
        Path(images_dir),
        metadata_csv,
        columns=ISIC2018_CLASSES,
        optional=(),
        meta_id_col="image_id",
        meta_columns={"age": "age", "sex": "sex", "localization": "site", "dx_type": "dx_type"},
        source="isic2018",
        name="ISIC 2018",
        on_error=on_error,
        verify_images=verify_images,
    )


def read_isic2019(
    ground_truth_csv: str | Path,
    images_dir: str | Path,
    *,
    metadata_csv: str | Path | None = None,
    on_error: str = "raise",
    verify_images: bool = True,
) -> LesionTable:
    """ISIC 2019 (Combalia et al. 2019): one-hot ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC[,UNK]``.

    ``AK`` becomes ``AKIEC``; ``UNK`` is left out of ``classes`` when no row has it. The metadata CSV
    (``image,age_approx,anatom_site_general,lesion_id,sex``) gives lesion ids; rows without one are
    their own group, counted in ``table.notes["rows_without_lesion_id"]``.
    """
    return _read_isic(
        Path(ground_truth_csv),
        Path(images_dir),
        metadata_csv,
        columns=ISIC2019_COLUMNS[:-1],
        optional=("UNK",),
        meta_id_col="image",
        meta_columns={"age_approx": "age", "sex": "sex", "anatom_site_general": "site"},
        source="isic2019",
        name="ISIC 2019",
        on_error=on_error,
        verify_images=verify_images,
    )


def _in_root(root: Path | None, given: str | Path | None, defaults: Sequence[str], what: str, flag: str) -> Path:
    """``given`` as is, else the first default name found in ``root``; an error says what was tried."""
    if given is not None:
        return Path(given)
    if root is None:
        raise DataError(f"No {what} given: pass {flag} or a root folder holding one of {list(defaults)}.")
    for name in defaults:
        if (root / name).exists():
            return root / name
    raise DataError(f"No {what} in {root}: looked for {list(defaults)}; pass {flag} to name it.")


def _load_isic(year: int, root: str | Path | None, **kw: Any) -> LesionTable:
    r = Path(root) if root is not None else None
    if r is not None and r.is_file():  # root given as the ground-truth CSV itself
        if kw.get("ground_truth_csv") is not None:
            raise DataError(f"Got both root {r} (a file) and ground_truth_csv {kw['ground_truth_csv']}; pass one.")
        kw["ground_truth_csv"], r = r, None
    if year == 2018:
        gt_names = [
            "ISIC2018_Task3_Training_GroundTruth.csv",
            "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
        ]
        img_names, meta_names, reader = ["ISIC2018_Task3_Training_Input"], ["HAM10000_metadata.csv"], read_isic2018
    else:
        gt_names, img_names = ["ISIC_2019_Training_GroundTruth.csv"], ["ISIC_2019_Training_Input"]
        meta_names, reader = ["ISIC_2019_Training_Metadata.csv"], read_isic2019  # type: ignore[assignment]
    gt = _in_root(r, kw.pop("ground_truth_csv", None), gt_names, "ground-truth CSV", "ground_truth_csv (--gt)")
    images = _in_root(r, kw.pop("images_dir", None), img_names, "image folder", "images_dir (--images)")
    meta = kw.pop("metadata_csv", None)
    if meta is None and r is not None:
        found = [r / m for m in meta_names if (r / m).is_file()]
        if found:
            logger.info("Using lesion ids from %s.", found[0])
            meta = found[0]
    return reader(gt, images, metadata_csv=meta, **kw)


def _load_dermamnist(root: str | Path | None, **kw: Any) -> LesionTable:
    if root is None:
        raise DataError("DermaMNIST needs root: the .npz file or a folder holding dermamnist*.npz.")
    p = Path(root)
    if p.is_dir():
        found = sorted(p.glob("dermamnist*.npz"))
        if len(found) != 1:
            raise DataError(
                f"Expected exactly one dermamnist*.npz in {p}, found {[f.name for f in found]}; pass the file."
            )
        p = found[0]
    return read_dermamnist(p, **kw)


def _need_root(reader: Callable[..., LesionTable]) -> Callable[..., LesionTable]:
    def call(root: str | Path | None, **kw: Any) -> LesionTable:
        if root is None:
            raise DataError(f"{reader.__name__} needs a root folder.")
        return reader(root, **kw)

    return call


#: Dataset formats known to :func:`load_dataset`.
FORMATS: dict[str, Callable[..., LesionTable]] = {
    "ham10000": _need_root(read_ham10000),
    "isic2018": lambda root, **kw: _load_isic(2018, root, **kw),
    "isic2019": lambda root, **kw: _load_isic(2019, root, **kw),
    "dermamnist": _load_dermamnist,
    "folder": _need_root(read_folder),
}


def load_dataset(fmt: str, root: str | Path | None = None, **kwargs: Any) -> LesionTable:
    """Read a dataset by format name (one of :data:`FORMATS`).

    For ``isic2018``/``isic2019``, ``root`` is a folder holding the official file names (ground
    truth CSV, ``*_Training_Input`` folder, metadata CSV, the last used when present) or the ground
    truth CSV itself; ``ground_truth_csv``, ``images_dir`` and ``metadata_csv`` override them.
    For ``dermamnist``, ``root`` is the ``.npz`` (or its folder).
    """
    key = str(fmt).strip().lower()
    if key not in FORMATS:
        raise ValueError(f"The 'fmt' parameter must be one of {sorted(FORMATS)}. Got {fmt!r} instead.")
    return FORMATS[key](root, **kwargs)
