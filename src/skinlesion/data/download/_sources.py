"""Registry of the official download sources of HAM10000, ISIC 2018 Task 3 and ISIC 2019.

Sources:

* ISIC challenge data bucket, ``https://isic-challenge-data.s3.amazonaws.com`` (the files linked
  from https://challenge.isic-archive.com/data/).
* HAM10000 on Harvard Dataverse, doi:10.7910/DVN/DBW86T (Tschandl et al., Sci Data 5, 180161,
  2018). Dataverse asks the user to accept its terms in the browser, so these archives are not
  fetched by URL here: download them from the dataset page and pass ``from_dir``.

No checksum or size is pinned: none has been verified by this project. Fields left ``None`` are
computed at download time and recorded in ``<dest>/CHECKSUMS.sha256``; pin them here (with the
value published by the data provider) to make every later download verify against them.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from skinlesion.errors import DownloadError

logger = logging.getLogger(__name__)

ISIC_BUCKET = "https://isic-challenge-data.s3.amazonaws.com"
HAM10000_PAGE = "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/DBW86T"
ISIC_PAGE = "https://challenge.isic-archive.com/data/"

#: zip member rule: (glob on the member's base name, folder under the dataset root).
#: ``{archive}`` in the folder is replaced by the archive's name without ``.zip``.
ExtractRule = tuple[str, str]


@dataclass(frozen=True)
class SourceFile:
    """One file to fetch: where it lives, what it must be, and where its content goes.

    Attributes:
        filename: name on the server and in a ``from_dir`` folder.
        url: direct URL, or ``None`` when the file can only be fetched by hand (see ``page``).
        size: expected size in bytes, ``None`` when not pinned.
        sha256: expected lower-case hex digest, ``None`` when not pinned.
        extract: for zip archives, rules mapping member base names to folders under the root.
        target: for plain files, the path under the root the file is copied to.
        aliases: other names the file may carry in a ``from_dir`` folder.
        page: human landing page for the file.
    """

    filename: str
    url: str | None
    size: int | None = None
    sha256: str | None = None
    extract: tuple[ExtractRule, ...] = ()
    target: str | None = None
    aliases: tuple[str, ...] = ()
    page: str | None = None

    @property
    def is_archive(self) -> bool:
        return self.filename.lower().endswith(".zip")

    def folder_for(self, member_name: str) -> str | None:
        """Folder (under the root) a zip member with base name ``member_name`` goes to, or None."""
        for pattern, folder in self.extract:
            if fnmatch.fnmatch(member_name.lower(), pattern.lower()):
                return folder.replace("{archive}", self.filename[: -len(".zip")])
        return None


@dataclass(frozen=True)
class SourceSet:
    """A complete set of files that yields one split of a dataset in the reader's layout.

    Attributes:
        name: short name (``isic-challenge``, ``dataverse``).
        files: the files to fetch.
        image_dir: folder under the root that receives the images.
        index_csv: CSV under the root that lists every image of the split.
        id_column: column of ``index_csv`` holding the image id (``<id>.jpg`` in ``image_dir``).
        outputs: further paths under the root that must exist once unpacked.
        postprocess: step run after unpacking (derives files the readers need).
        note: shown to users (what the set lacks, or how to obtain it).
    """

    name: str
    files: tuple[SourceFile, ...]
    image_dir: str
    index_csv: str
    id_column: str
    outputs: tuple[str, ...] = ()
    postprocess: Callable[[Path], None] | None = field(default=None, compare=False)
    note: str = ""

    @property
    def downloadable(self) -> bool:
        return all(f.url is not None for f in self.files)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its splits, each with one or more alternative source sets (preferred first)."""

    name: str
    description: str
    citation: str
    splits: Mapping[str, tuple[SourceSet, ...]]


_IMAGES = ("*.jpg", "*.jpeg")
_LICENSES = (("license*.txt", "licenses/{archive}"), ("attribution*.txt", "licenses/{archive}"))


def _isic(year: int, filename: str, extract: tuple[ExtractRule, ...] = (), target: str | None = None) -> SourceFile:
    return SourceFile(
        filename=filename,
        url=f"{ISIC_BUCKET}/{year}/{filename}",
        extract=extract,
        target=target,
        page=ISIC_PAGE,
    )


def _images_to(folder: str) -> tuple[ExtractRule, ...]:
    return tuple((p, folder) for p in _IMAGES) + _LICENSES


_CSV_TO_ROOT: tuple[ExtractRule, ...] = (("*.csv", "."), *_LICENSES)

# HAM10000 ``dx_type`` codes for the ISIC 2018 ``diagnosis_confirm_type`` values.
_DX_TYPE = {
    "histopathology": "histo",
    "serial imaging showing no change": "follow_up",
    "single image expert consensus": "consensus",
    "confocal microscopy with consensus dermoscopy": "confocal",
}
HAM10000_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DownloadError(f"Expected {path} after unpacking, but it does not exist.")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def ham10000_metadata_from_isic2018(root: Path) -> None:
    """Write ``HAM10000_metadata.csv`` from the ISIC 2018 Task 3 training ground truth and lesion
    groupings (same 10,015 images as HAM10000; Codella et al., arXiv:1902.03368).

    ``dx`` comes from the one-hot ground truth, ``lesion_id`` and ``dx_type`` from the lesion
    groupings. The ISIC files carry no age, sex or body site: ``age`` is left empty and ``sex`` and
    ``localization`` are ``unknown``, as HAM10000 itself writes missing values.
    """
    gt_path = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    groups_path = root / "ISIC2018_Task3_Training_LesionGroupings.csv"
    groups = {}
    for row in _read_csv(groups_path):
        if "image" not in row or "lesion_id" not in row:
            raise DownloadError(f"{groups_path}: expected columns 'image' and 'lesion_id'; got {sorted(row)}.")
        groups[row["image"]] = row
    rows = []
    for i, row in enumerate(_read_csv(gt_path), start=2):
        image = row.pop("image", None)
        if image is None:
            raise DownloadError(f"{gt_path}: expected an 'image' column; got {sorted(row)}.")
        try:
            positive = [c for c, v in row.items() if v not in (None, "") and float(v) >= 0.5]
        except ValueError as exc:
            raise DownloadError(f"{gt_path}, line {i} (image {image}): class columns must be 0/1; {exc}.") from exc
        if len(positive) != 1:
            raise DownloadError(
                f"{gt_path}, line {i} (image {image}): expected exactly one class set to 1; got {positive}."
            )
        if image not in groups:
            raise DownloadError(f"{groups_path}: no row for image {image!r} listed in {gt_path.name} (line {i}).")
        confirm = groups[image].get("diagnosis_confirm_type", "").strip()
        dx_type = _DX_TYPE.get(confirm.lower(), confirm)
        rows.append((groups[image]["lesion_id"], image, positive[0].lower(), dx_type, "", "unknown", "unknown"))
    out = root / "HAM10000_metadata.csv"
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(HAM10000_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, out)
    logger.warning(
        "Derived %s from the ISIC 2018 Task 3 files (%d images): age, sex and localization are not "
        "part of those files and were left empty/unknown. Use the Dataverse archives (--from-dir) for them.",
        out,
        len(rows),
    )


_HAM_ISIC = SourceSet(
    name="isic-challenge",
    files=(
        _isic(2018, "ISIC2018_Task3_Training_Input.zip", _images_to("images")),
        _isic(2018, "ISIC2018_Task3_Training_GroundTruth.zip", _CSV_TO_ROOT),
        _isic(
            2018, "ISIC2018_Task3_Training_LesionGroupings.csv", target="ISIC2018_Task3_Training_LesionGroupings.csv"
        ),
    ),
    image_dir="images",
    index_csv="HAM10000_metadata.csv",
    id_column="image_id",
    outputs=("ISIC2018_Task3_Training_GroundTruth.csv",),
    postprocess=ham10000_metadata_from_isic2018,
    note="ISIC 2018 Task 3 training set (the HAM10000 images); metadata derived, without age/sex/site.",
)

_HAM_DATAVERSE = SourceSet(
    name="dataverse",
    files=(
        SourceFile("HAM10000_images_part_1.zip", None, extract=_images_to("images"), page=HAM10000_PAGE),
        SourceFile("HAM10000_images_part_2.zip", None, extract=_images_to("images"), page=HAM10000_PAGE),
        SourceFile(
            "HAM10000_metadata.csv",
            None,
            target="HAM10000_metadata.csv",
            aliases=("HAM10000_metadata.tab", "HAM10000_metadata"),
            page=HAM10000_PAGE,
        ),
    ),
    image_dir="images",
    index_csv="HAM10000_metadata.csv",
    id_column="image_id",
    note=f"Official archives; accept the terms and download them from {HAM10000_PAGE}, then use --from-dir.",
)


def _isic2018_split(kind: str, with_groupings: bool) -> SourceSet:
    stem = f"ISIC2018_Task3_{kind}"
    files = [
        _isic(2018, f"{stem}_Input.zip", _images_to(f"{stem}_Input")),
        _isic(2018, f"{stem}_GroundTruth.zip", _CSV_TO_ROOT),
    ]
    if with_groupings:
        files.append(_isic(2018, f"{stem}_LesionGroupings.csv", target=f"{stem}_LesionGroupings.csv"))
    return SourceSet(
        name="isic-challenge",
        files=tuple(files),
        image_dir=f"{stem}_Input",
        index_csv=f"{stem}_GroundTruth.csv",
        id_column="image",
        outputs=(f"{stem}_LesionGroupings.csv", "HAM10000_metadata.csv") if with_groupings else (),
        # lesion ids in the HAM10000 format the readers use to split by lesion
        postprocess=ham10000_metadata_from_isic2018 if with_groupings else None,
    )


def _isic2019_split(kind: str) -> SourceSet:
    stem = f"ISIC_2019_{kind}"
    files = (
        _isic(2019, f"{stem}_Input.zip", _images_to(f"{stem}_Input")),
        _isic(2019, f"{stem}_GroundTruth.csv", target=f"{stem}_GroundTruth.csv"),
        _isic(2019, f"{stem}_Metadata.csv", target=f"{stem}_Metadata.csv"),
    )
    return SourceSet(
        name="isic-challenge",
        files=files,
        image_dir=f"{stem}_Input",
        index_csv=f"{stem}_GroundTruth.csv",
        id_column="image",
        outputs=(f"{stem}_Metadata.csv",),
    )


DATASET_SPECS: dict[str, DatasetSpec] = {
    "ham10000": DatasetSpec(
        name="ham10000",
        description="HAM10000: 10,015 dermoscopic images of 7,470 lesions, 7 classes.",
        citation="Tschandl P, Rosendahl C, Kittler H. Sci Data 5, 180161 (2018). doi:10.1038/sdata.2018.161",
        splits={"train": (_HAM_DATAVERSE, _HAM_ISIC)},
    ),
    "isic2018": DatasetSpec(
        name="isic2018",
        description="ISIC 2018 Task 3: lesion diagnosis, 7 classes (training = HAM10000).",
        citation="Codella N et al. arXiv:1902.03368 (2019); Tschandl P et al. Sci Data 5, 180161 (2018).",
        splits={
            "train": (_isic2018_split("Training", with_groupings=True),),
            "val": (_isic2018_split("Validation", with_groupings=False),),
            "test": (_isic2018_split("Test", with_groupings=False),),
        },
    ),
    "isic2019": DatasetSpec(
        name="isic2019",
        description="ISIC 2019: 25,331 training images, 8 classes plus UNK at test time.",
        citation=(
            "Tschandl P et al. Sci Data 5, 180161 (2018); Codella N et al. arXiv:1710.05006 (2017); "
            "Combalia M et al. arXiv:1908.02288 (2019)."
        ),
        splits={"train": (_isic2019_split("Training"),), "test": (_isic2019_split("Test"),)},
    ),
}
