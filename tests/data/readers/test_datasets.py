"""Readers and LesionTable on tiny fixtures written to tmp_path (8x6 images, a few rows)."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinlesion.classes import CANONICAL, ISIC2018_CLASSES
from skinlesion.data.readers import (
    load_dataset,
    read_dermamnist,
    read_folder,
    read_ham10000,
    read_isic2018,
    read_isic2019,
)
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

# ---------------------------------------------------------------- fixture builders


def px(v: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


def write_image(path: Path, color: tuple[int, int, int] = (200, 100, 50), size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


HAM_ROWS = [  # lesion_id, image_id, dx
    ("HAM_1", "ISIC_1", "mel"),
    ("HAM_1", "ISIC_2", "mel"),
    ("HAM_2", "ISIC_3", "nv"),
    ("HAM_3", "ISIC_4", "bkl"),
    ("HAM_4", "ISIC_5", "akiec"),
]


def make_ham(root: Path, rows=HAM_ROWS, *, folder: str = "images", images: bool = True, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for k, (les, img, dx) in enumerate(rows):
        lines.append(f"{les},{img},{dx},histo,{40 + k}.0,female,back")
        if images:
            write_image(root / folder / f"{img}.jpg", color=(10 * k, 50, 90))
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n" + extra)
    return root


def one_hot_csv(path: Path, columns: list[str], rows: list[tuple[str, list[str]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(["image", *columns])] + [",".join([img, *vals]) for img, vals in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def hot(columns: list[str], name: str, one: str = "1.0", zero: str = "0.0") -> list[str]:
    return [one if c == name else zero for c in columns]


I18 = list(ISIC2018_CLASSES)
I19 = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]


def make_isic2018(root: Path, labels=("MEL", "NV", "BCC", "AKIEC")) -> tuple[Path, Path]:
    rows = [(f"ISIC_{k:07d}", hot(I18, lab)) for k, lab in enumerate(labels)]
    for img, _ in rows:
        write_image(root / "ISIC2018_Task3_Training_Input" / f"{img}.jpg")
    gt = one_hot_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", I18, rows)
    return gt, root / "ISIC2018_Task3_Training_Input"


# ---------------------------------------------------------------- HAM10000


def test_ham10000_reads_labels_lesions_metadata_and_paths(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham")
    t = read_ham10000(root)
    assert t.source == "ham10000" and t.group_key == "lesion_id" and t.classes == ISIC2018_CLASSES
    assert list(t.frame["image_id"]) == ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4", "ISIC_5"]
    assert list(t.frame["label"]) == ["MEL", "MEL", "NV", "BKL", "AKIEC"]
    assert list(t.labels()) == [0, 0, 1, 4, 3]
    assert list(t.frame["lesion_id"]) == ["HAM_1", "HAM_1", "HAM_2", "HAM_3", "HAM_4"]
    assert t.frame["age"].dtype == float and t.frame["age"].iloc[2] == 42.0
    assert list(t.frame["site"].unique()) == ["back"] and "dx_type" in t.frame
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in t.frame["path"])
    assert t.skipped == [] and t.notes["rows_without_lesion_id"] == 0
    img = t.load_image(2)
    assert img.shape == (6, 8, 3) and img.dtype == np.uint8 and px(img[0, 0]) == pytest.approx((20, 50, 90), abs=3)


def test_ham10000_official_part_folders(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham", folder="HAM10000_images_part_1")
    (root / "HAM10000_images_part_2").mkdir()
    (root / "HAM10000_images_part_1" / "ISIC_5.jpg").rename(root / "HAM10000_images_part_2" / "ISIC_5.jpg")
    t = read_ham10000(root)
    assert len(t) == 5 and Path(t.frame["path"].iloc[4]).parent.name == "HAM10000_images_part_2"


def test_ham10000_no_image_folder(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham", images=False)
    with pytest.raises(DataError, match=r"No image folder under .*ham: expected .*images or HAM10000_images_part_1"):
        read_ham10000(root)


def test_ham10000_empty_lesion_id_is_counted(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham", rows=[("", "ISIC_1", "mel"), ("HAM_2", "ISIC_2", "nv")])
    t = read_ham10000(root)
    assert pd.isna(t.frame["lesion_id"].iloc[0]) and t.notes["rows_without_lesion_id"] == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", r"HAM10000_metadata.csv is empty; expected a header row with columns \['lesion_id', 'image_id', 'dx'\]"),
        ("lesion_id,image_id,dx\n", r"has a header but no data rows"),
        ("lesion_id,image_id,dx\nHAM_1,ISIC_1,mel,oops\n",
         r"row 1, image_id 'ISIC_1': row has 4 field\(s\), expected 3 \(lesion_id,image_id,dx\)"),
        ("lesion_id,image_id,dx\nHAM_1,ISIC_1\n", r"row 1, image_id 'ISIC_1': row has 2 field\(s\), expected 3"),
        ("lesion_id,image_id,dx,dx\nHAM_1,ISIC_1,mel,mel\n", r"repeats column name\(s\) \['dx'\] in its header"),
        (b"lesion_id,image_id,dx\n\xff\xfe,ISIC_1,mel\n", r"is not a readable CSV file: 'utf-8' codec"),
        ("lesion_id,image_id,dx\nHAM_1,,mel\n", r"HAM10000_metadata.csv, row 1: empty image id"),
        (
            "lesion,image_id,diagnosis\nHAM_1,ISIC_1,mel\n",
            r"missing required column\(s\) \['lesion_id', 'dx'\]: expected \['lesion_id', 'image_id', 'dx'\], "
            r"found \['lesion', 'image_id', 'diagnosis'\]",
        ),
    ],
)
def test_ham10000_bad_files(tmp_path: Path, content: str | bytes, match: str) -> None:
    (tmp_path / "images").mkdir()
    meta = tmp_path / "HAM10000_metadata.csv"
    meta.write_bytes(content) if isinstance(content, bytes) else meta.write_text(content)
    with pytest.raises(DataError, match=match):
        read_ham10000(tmp_path)


def test_trailing_empty_fields_are_tolerated(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham")
    meta = root / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace("back\n", "back,,\n"))
    assert list(read_ham10000(root).frame["site"]) == ["back"] * 5


def test_non_numeric_age_is_missing_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_ham(tmp_path / "ham", rows=HAM_ROWS[:1])
    meta = root / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace("40.0", "forty"))
    with caplog.at_level(logging.WARNING):
        t = read_ham10000(root)
    assert np.isnan(t.frame["age"].iloc[0]) and "1 non-numeric age value(s) read as missing" in caplog.text


def test_missing_metadata_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"HAM10000 metadata not found: .*HAM10000_metadata.csv"):
        read_ham10000(tmp_path)


def test_bad_rows_are_all_reported_with_file_row_id_and_expectation(tmp_path: Path) -> None:
    rows = [*HAM_ROWS, ("HAM_9", "ISIC_9", "melanocytic")]
    root = make_ham(tmp_path / "ham", rows=rows)
    (root / "images" / "ISIC_3.jpg").unlink()  # row 3: missing image
    (root / "images" / "ISIC_4.jpg").write_bytes(b"this is not a jpeg")  # row 4: unreadable
    with pytest.raises(DataError) as info:
        read_ham10000(root)
    msg = str(info.value)
    assert "3 problem(s) in 3 row(s)" in msg
    assert "HAM10000_metadata.csv, row 3, image_id 'ISIC_3': image file not found: expected ISIC_3.jpg" in msg
    assert "row 4, image_id 'ISIC_4': cannot read the image header of" in msg and "ISIC_4.jpg" in msg
    assert "row 6, image_id 'ISIC_9': unknown dx 'melanocytic'; expected one of ['mel', 'nv'" in msg
    assert "on_error='skip'" in msg


def test_many_problems_are_summarised(tmp_path: Path) -> None:
    rows = [(f"HAM_{k}", f"ISIC_{k}", "zzz") for k in range(25)]
    root = make_ham(tmp_path / "ham", rows=rows)
    with pytest.raises(
        DataError, match=r"25 problem\(s\) in 25 row\(s\)[\s\S]*row 20,[\s\S]*\.\.\. and 5 more problem"
    ):
        read_ham10000(root)


def test_skip_leaves_bad_rows_out_records_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [*HAM_ROWS, ("HAM_9", "ISIC_9", "xyz")]
    root = make_ham(tmp_path / "ham", rows=rows)
    (root / "images" / "ISIC_3.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        t = read_ham10000(root, on_error="skip")
    assert list(t.frame["image_id"]) == ["ISIC_1", "ISIC_2", "ISIC_4", "ISIC_5"]
    assert [(s.row, s.image_id) for s in t.skipped] == [(6, "ISIC_9"), (3, "ISIC_3")]
    assert all(s.file.endswith("HAM10000_metadata.csv") for s in t.skipped)
    assert "left out 2 row(s) with 2 problem(s)" in caplog.text


def test_skip_that_leaves_nothing_is_an_error(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham", rows=[("HAM_1", "ISIC_1", "xyz")])
    with pytest.raises(DataError, match=r"dataset is empty after leaving out 1 bad row"):
        read_ham10000(root, on_error="skip")


def test_on_error_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"The 'on_error' parameter must be one of \['raise', 'skip'\]. Got 'ignore'"):
        read_ham10000(make_ham(tmp_path / "ham"), on_error="ignore")


def test_duplicate_ids_same_label_keep_first_conflicting_drop_all(tmp_path: Path) -> None:
    rows = [*HAM_ROWS, ("HAM_1", "ISIC_1", "mel"), ("HAM_7", "ISIC_3", "bcc")]
    root = make_ham(tmp_path / "ham", rows=rows)
    with pytest.raises(DataError) as info:
        read_ham10000(root)
    msg = str(info.value)
    assert "row 6, image_id 'ISIC_1': duplicate image id (first listed at row 1)" in msg
    assert "row 3, image_id 'ISIC_3': duplicate image id with conflicting labels (also at rows [7])" in msg
    t = read_ham10000(root, on_error="skip")
    assert list(t.frame["image_id"]) == ["ISIC_1", "ISIC_2", "ISIC_4", "ISIC_5"]


def test_unverified_corrupt_image_fails_at_load_naming_the_file(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "images" / "ISIC_1.jpg", quality=95)
    data = (root / "images" / "ISIC_1.jpg").read_bytes()
    (root / "images" / "ISIC_1.jpg").write_bytes(data[: len(data) // 2])  # header intact, data truncated
    t = read_ham10000(root)  # header check passes: truncation shows only on decode
    with pytest.raises(DataError, match=r"Cannot decode .*ISIC_1.jpg \(image_id 'ISIC_1'\): the file is truncated"):
        t.load_image(0)


# ---------------------------------------------------------------- ISIC 2018


def test_isic2018_without_metadata_is_grouped_by_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gt, images = make_isic2018(tmp_path)
    with caplog.at_level(logging.WARNING):
        t = read_isic2018(gt, images)
    assert t.group_key == "image_id" and t.frame["lesion_id"].isna().all()
    assert list(t.frame["label"]) == ["MEL", "NV", "BCC", "AKIEC"] and t.classes == ISIC2018_CLASSES
    assert "no lesion id; splits will be by image" in caplog.text


def test_isic2018_joins_ham_metadata_for_lesions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gt, images = make_isic2018(tmp_path)
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0000000,mel,histo,50,male,face\nHAM_1,ISIC_0000001,nv,histo,50,male,face\n"
        "HAM_2,ISIC_0000002,bcc,histo,,female,back\n"
    )
    with caplog.at_level(logging.WARNING):
        t = read_isic2018(gt, images, metadata_csv=meta)
    assert t.group_key == "lesion_id"
    assert list(t.frame["lesion_id"].fillna("-")) == ["HAM_1", "HAM_1", "HAM_2", "-"]
    assert t.notes["rows_without_lesion_id"] == 1 and "1 image(s) of" in caplog.text
    assert t.frame["site"].iloc[0] == "face" and np.isnan(t.frame["age"].iloc[2])


def test_isic2018_metadata_disagreeing_dx_or_lesion_is_an_error(tmp_path: Path) -> None:
    gt, images = make_isic2018(tmp_path)
    meta = tmp_path / "meta.csv"
    meta.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_0000000,nv\nHAM_2,ISIC_0000001,nv\nHAM_3,ISIC_0000001,nv\n")
    with pytest.raises(DataError) as info:
        read_isic2018(gt, images, metadata_csv=meta)
    msg = str(info.value)
    assert "row 1, image_id 'ISIC_0000000': ground truth says MEL but" in msg and "has dx 'nv'" in msg
    assert "row 2, image_id 'ISIC_0000001': metadata file" in msg and "different lesion ids" in msg


def test_isic2018_metadata_needs_lesion_id_column(tmp_path: Path) -> None:
    gt, images = make_isic2018(tmp_path)
    (tmp_path / "meta.csv").write_text("image_id,dx\nISIC_0000000,mel\n")
    with pytest.raises(DataError, match=r"Metadata file .*meta.csv is missing required column\(s\) \['lesion_id'\]"):
        read_isic2018(gt, images, metadata_csv=tmp_path / "meta.csv")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (["0", "0", "0", "0", "0", "0", "0"], r"no positive label; expected exactly one 1 among \['MEL', 'NV'"),
        (["1", "1", "0", "0", "0", "0", "0"], r"several positive labels \['MEL', 'NV'\]; expected exactly one 1"),
        (["0.5", "0", "0", "0", "0", "x", "0"], r"values MEL='0.5', DF='x' are not 0 or 1"),
    ],
)
def test_isic2018_bad_one_hot_rows(tmp_path: Path, values: list[str], match: str) -> None:
    gt, images = make_isic2018(tmp_path)
    with open(gt, "a") as fh:
        fh.write("ISIC_0000009," + ",".join(values) + "\n")
    write_image(images / "ISIC_0000009.jpg")
    with pytest.raises(DataError, match=r"GroundTruth.csv, row 5, image_id 'ISIC_0000009': " + match):
        read_isic2018(gt, images)


def test_isic2018_missing_class_column(tmp_path: Path) -> None:
    gt = one_hot_csv(tmp_path / "gt.csv", I19, [("ISIC_1", hot(I19, "MEL"))])
    with pytest.raises(DataError, match=r"ISIC 2018 ground truth .*gt.csv is missing required column\(s\) \['AKIEC'\]"):
        read_isic2018(gt, tmp_path)


def test_isic2018_missing_image_folder(tmp_path: Path) -> None:
    gt, _ = make_isic2018(tmp_path)
    with pytest.raises(DataError, match=r"Image folder not found: .*nowhere"):
        read_isic2018(gt, tmp_path / "nowhere")


# ---------------------------------------------------------------- ISIC 2019


def make_isic2019(root: Path, labels=("MEL", "AK", "SCC", "NV"), *, unk_column: bool = True) -> tuple[Path, Path, Path]:
    cols = I19 if unk_column else I19[:-1]
    rows = [(f"ISIC_{k:07d}", hot(cols, lab, "1", "0")) for k, lab in enumerate(labels)]
    for img, _ in rows:
        write_image(root / "ISIC_2019_Training_Input" / f"{img}.jpg")
    gt = one_hot_csv(root / "ISIC_2019_Training_GroundTruth.csv", cols, rows)
    meta = root / "ISIC_2019_Training_Metadata.csv"
    lines = ["image,age_approx,anatom_site_general,lesion_id,sex"]
    lines += [f"{img},{30 + k},anterior torso,{'BCN_1' if k < 2 else ''},female" for k, (img, _) in enumerate(rows)]
    meta.write_text("\n".join(lines) + "\n")
    return gt, root / "ISIC_2019_Training_Input", meta


def test_isic2019_maps_ak_drops_absent_unk_and_counts_missing_lesions(tmp_path: Path) -> None:
    gt, images, meta = make_isic2019(tmp_path)
    t = read_isic2019(gt, images, metadata_csv=meta)
    assert list(t.frame["label"]) == ["MEL", "AKIEC", "SCC", "NV"]
    assert t.classes == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC", "SCC")
    assert t.group_key == "lesion_id" and t.notes["rows_without_lesion_id"] == 2
    assert list(t.frame["age"]) == [30.0, 31.0, 32.0, 33.0] and t.frame["site"].iloc[0] == "anterior torso"


def test_isic2019_keeps_unk_when_used_and_reads_without_unk_column(tmp_path: Path) -> None:
    gt, images, _ = make_isic2019(tmp_path / "a", labels=("MEL", "UNK"))
    assert read_isic2019(gt, images).classes == CANONICAL
    gt, images, _ = make_isic2019(tmp_path / "b", unk_column=False)
    assert "UNK" not in read_isic2019(gt, images).classes


# ---------------------------------------------------------------- DermaMNIST


def make_npz(path: Path, size: int = 28, n: tuple[int, int, int] = (7, 2, 3), **override: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for s, k in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{s}_images"] = rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(k) % 7).astype(np.uint8).reshape(k, 1)
    arrays.update(override)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_dermamnist_sizes(tmp_path: Path, size: int) -> None:
    p = make_npz(tmp_path / "dermamnist.npz", size=size, n=(7, 1, 1))
    t = read_dermamnist(p, split="train")
    assert len(t) == 7 and t.group_key == "image_id" and t.source == "dermamnist"
    assert t.frame["image_id"].iloc[3] == "dermamnist_train_000003"
    # medmnist 0..6 = AKIEC, BCC, BKL, DF, MEL, NV, VASC; classes in canonical order
    assert list(t.frame["label"]) == ["AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC"]
    assert t.classes == ISIC2018_CLASSES and list(t.labels()) == [3, 2, 4, 5, 0, 1, 6]
    img = t.load_image(4)
    assert img.shape == (size, size, 3) and np.array_equal(img, t.arrays[4])
    img[:] = 0  # a copy: the dataset itself is untouched
    assert t.arrays[4].any()


def test_dermamnist_all_pools_splits_and_subset_keeps_arrays(tmp_path: Path) -> None:
    t = read_dermamnist(make_npz(tmp_path / "d.npz"), split="all")
    assert len(t) == 12 and t.arrays.shape == (12, 28, 28, 3)
    assert t.frame["official_split"].value_counts().to_dict() == {"train": 7, "test": 3, "val": 2}
    sub = t.subset(["dermamnist_test_000002", "dermamnist_val_000000"])
    assert list(sub.frame["image_id"]) == ["dermamnist_val_000000", "dermamnist_test_000002"]
    assert np.array_equal(sub.load_image(1), t.arrays[11]) and sub.arrays is t.arrays


def test_dermamnist_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"DermaMNIST file not found: .*nope.npz"):
        read_dermamnist(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"Cannot read .*bad.npz as a .npz file"):
        read_dermamnist(tmp_path / "bad.npz")
    p = tmp_path / "partial.npz"
    np.savez(p, train_images=np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(
        DataError, match=r"missing key\(s\) \['train_labels'\]: expected \['train_images', 'train_labels'\]"
    ):
        read_dermamnist(p)
    p = make_npz(tmp_path / "gray.npz", train_images=np.zeros((7, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"train_images must be uint8 of shape \(N, H, W, 3\); got uint8 \(7, 28, 28\)"):
        read_dermamnist(p)
    p = make_npz(tmp_path / "short.npz", train_labels=np.zeros((6, 1), np.uint8))
    with pytest.raises(DataError, match=r"train_labels must have shape \(7, 1\) to match train_images; got \(6, 1\)"):
        read_dermamnist(p)
    with pytest.raises(ValueError, match=r"The 'split' parameter must be one of \['train', 'val', 'test', 'all'\]"):
        read_dermamnist(make_npz(tmp_path / "ok.npz"), split="dev")


def test_dermamnist_out_of_range_label(tmp_path: Path) -> None:
    labels = np.array([[0], [1], [9], [3], [4], [5], [6]], np.uint8)
    p = make_npz(tmp_path / "d.npz", train_labels=labels)
    with pytest.raises(
        DataError, match=r"row 3, image_id 'dermamnist_train_000002': train_labels\[2\] = 9; expected 0..6"
    ):
        read_dermamnist(p)
    t = read_dermamnist(p, on_error="skip")
    assert len(t) == 6 and t.skipped[0].image_id == "dermamnist_train_000002"
    assert np.array_equal(t.load_image(2), t.arrays[3])  # array_index still points at the right image


# ---------------------------------------------------------------- class folders


def test_folder_reader(tmp_path: Path) -> None:
    write_image(tmp_path / "mel" / "a.JPG")
    write_image(tmp_path / "mel" / "deep" / "b.png")
    write_image(tmp_path / "Melanoma" / "c.tiff")
    write_image(tmp_path / "NV" / "d.jpeg")
    write_image(tmp_path / "NV" / ".hidden.jpg")
    (tmp_path / "NV" / "notes.txt").write_text("ignored")
    t = read_folder(tmp_path)
    assert sorted(t.frame["image_id"]) == ["Melanoma/c", "NV/d", "mel/a", "mel/deep/b"]
    assert dict(zip(t.frame["image_id"], t.frame["label"], strict=True)) == {
        "Melanoma/c": "MEL",
        "NV/d": "NV",
        "mel/a": "MEL",
        "mel/deep/b": "MEL",
    }
    assert t.classes == ("MEL", "NV") and t.group_key == "image_id" and t.source == "folder"


def test_folder_problems(tmp_path: Path) -> None:
    write_image(tmp_path / "mel" / "a.jpg")
    write_image(tmp_path / "cats" / "b.jpg")
    write_image(tmp_path / "loose.png")
    (tmp_path / "nv").mkdir()
    (tmp_path / "nv" / "broken.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(DataError) as info:
        read_folder(tmp_path)
    msg = str(info.value)
    assert "image_id 'loose': image is not inside a class folder" in msg
    assert "image_id 'cats/b': folder name 'cats' is not a known class" in msg
    assert "image_id 'nv/broken': cannot read the image header" in msg
    t = read_folder(tmp_path, on_error="skip")
    assert list(t.frame["image_id"]) == ["mel/a"] and len(t.skipped) == 3 and t.classes == ("MEL",)
    assert all(s.row is None for s in t.skipped)


def test_folder_without_class_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    with pytest.raises(DataError, match=r"No class subfolders in .*: expected one folder per class"):
        read_folder(tmp_path)
    with pytest.raises(DataError, match=r"Image folder not found: .*missing"):
        read_folder(tmp_path / "missing")


# ---------------------------------------------------------------- load_dataset


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    assert len(load_dataset("ham10000", make_ham(tmp_path / "ham"))) == 5
    make_isic2018(tmp_path / "i18")
    assert load_dataset("ISIC2018", tmp_path / "i18").source == "isic2018"
    gt, images, _ = make_isic2019(tmp_path / "i19")
    t = load_dataset("isic2019", tmp_path / "i19")  # metadata found by its official name
    assert t.group_key == "lesion_id" and t.notes["rows_without_lesion_id"] == 2
    assert load_dataset("isic2019", gt, images_dir=images).group_key == "image_id"  # root = the CSV
    make_npz(tmp_path / "dm" / "dermamnist_64.npz", size=64)
    assert load_dataset("dermamnist", tmp_path / "dm", split="val").arrays.shape == (2, 64, 64, 3)


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"The 'fmt' parameter must be one of \['dermamnist', 'folder', 'ham10000'"):
        load_dataset("isic2020", tmp_path)
    with pytest.raises(
        DataError, match=r"No ground-truth CSV in .*: looked for \['ISIC_2019_Training_GroundTruth.csv'\]"
    ):
        load_dataset("isic2019", tmp_path)
    with pytest.raises(DataError, match=r"No image folder given: pass images_dir \(--images\)"):
        load_dataset("isic2018", None, ground_truth_csv=tmp_path / "gt.csv")
    with pytest.raises(DataError, match=r"read_ham10000 needs a root folder"):
        load_dataset("ham10000")
    make_npz(tmp_path / "dermamnist.npz")
    make_npz(tmp_path / "dermamnist_64.npz")
    with pytest.raises(
        DataError, match=r"Expected exactly one dermamnist\*.npz in .*, found \['dermamnist.npz', 'derm"
    ):
        load_dataset("dermamnist", tmp_path)


# ---------------------------------------------------------------- LesionTable


def _png16_rgb(path: Path, rgb16: tuple[int, int, int]) -> None:
    """A 2x2 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    raw = b"".join(b"\x00" + struct.pack(">HHHHHH", *rgb16, *rgb16) for _ in range(2))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_load_image_converts_every_mode_to_rgb_uint8(tmp_path: Path) -> None:
    d = tmp_path / "mel"
    d.mkdir()
    Image.new("L", (4, 3), 77).save(d / "gray.png")
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(d / "rgba.png")
    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.full((3, 4), 65535, np.uint16)).save(d / "gray16.png")
    pal = Image.new("P", (4, 3), 1)
    pal.putpalette([0, 0, 0, 250, 5, 5] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(d / "pal.png", transparency=0)
    _png16_rgb(d / "rgb16.png", (65535, 0, 32896))
    t = read_folder(tmp_path)
    got = {i: t.load_image(k) for k, i in enumerate(t.frame["image_id"])}
    for img in got.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert px(got["mel/gray"][0, 0]) == (77, 77, 77)
    assert px(got["mel/rgba"][0, 0]) == (10, 20, 30)
    assert px(got["mel/cmyk"][0, 0]) == pytest.approx((255, 255, 255), abs=2)
    assert px(got["mel/gray16"][0, 0]) == (255, 255, 255)
    assert px(got["mel/pal"][0, 0]) == (250, 5, 5)
    assert px(got["mel/rgb16"][0, 0]) == (255, 0, 128)


def test_load_image_missing_or_not_an_image(tmp_path: Path) -> None:
    root = make_ham(tmp_path / "ham")
    t = read_ham10000(root)
    (root / "images" / "ISIC_1.jpg").unlink()
    with pytest.raises(DataError, match=r"Image file not found: .*ISIC_1.jpg \(image_id 'ISIC_1'\)"):
        t.load_image(0)
    (root / "images" / "ISIC_2.jpg").write_text("hello")
    with pytest.raises(DataError, match=r"Cannot read .*ISIC_2.jpg \(image_id 'ISIC_2'\): not an image file"):
        t.load_image(1)


def _frame(ids: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": ids, "lesion_id": ids, "label": labels, "path": [pd.NA] * len(ids)})


def test_table_subset_labels_and_validation() -> None:
    t = LesionTable(_frame(["a", "b", "c"], ["NV", "MEL", "NV"]), ("MEL", "NV"), "folder", "lesion_id")
    assert list(t.labels()) == [1, 0, 1]
    assert list(t.subset(np.array([True, False, True])).frame["image_id"]) == ["a", "c"]
    assert list(t.subset(["c", "a"]).frame["image_id"]) == ["a", "c"]
    assert list(t.subset("b").frame["label"]) == ["MEL"]
    with pytest.raises(DataError, match=r"1 image id\(s\) are not in the table: \['zz'\]"):
        t.subset(["a", "zz"])
    with pytest.raises(ValueError, match=r"A boolean mask must have length 3 \(the table\); got 2"):
        t.subset(np.array([True, False]))
    with pytest.raises(DataError, match=r"Labels \['BCC'\] are not in the table's classes \['MEL', 'NV'\]"):
        LesionTable(_frame(["a"], ["BCC"]), ("MEL", "NV"), "folder", "lesion_id").labels()
    with pytest.raises(DataError, match=r"image ids must be unique; 1 repeat: \['a'\]"):
        LesionTable(_frame(["a", "a"], ["NV", "NV"]), ("NV",), "folder", "lesion_id")
    with pytest.raises(DataError, match=r"missing column\(s\) \['path'\]"):
        LesionTable(_frame(["a"], ["NV"]).drop(columns="path"), ("NV",), "folder", "lesion_id")
    with pytest.raises(DataError, match=r"The 'group_key' must be one of .* Got 'patient_id'"):
        LesionTable(_frame(["a"], ["NV"]), ("NV",), "folder", "patient_id")
    assert "n_images=3" in repr(t)
