"""Lesion-disjoint stratified splits, k-fold, manifests (in-memory tables, no images needed)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinlesion.classes import ISIC2018_CLASSES
from skinlesion.data.splits import (
    BY_IMAGE_NOTE,
    apply_manifest,
    group_ids,
    make_kfold,
    make_kfold_split,
    make_split,
    manifest_hash,
    read_manifest,
    write_manifest,
)
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError

# lesions per class, imbalanced like HAM10000; each lesion has 1..4 images
LESIONS = {"NV": 300, "MEL": 80, "BKL": 70, "BCC": 40, "AKIEC": 30, "VASC": 20, "DF": 20}


def make_table(seed: int = 0, *, group_key: str = "lesion_id", lesions: dict[str, int] = LESIONS) -> LesionTable:
    rng = np.random.default_rng(seed)
    rows = []
    for cls, n in lesions.items():
        for k in range(n):
            for j in range(int(rng.integers(1, 5))):
                rows.append((f"{cls}_{k}_{j}", f"L_{cls}_{k}", cls))
    f = pd.DataFrame(rows, columns=["image_id", "lesion_id", "label"])
    f["path"] = pd.NA
    if group_key == "image_id":
        f["lesion_id"] = pd.NA
    return LesionTable(f, ISIC2018_CLASSES, "ham10000", group_key)


def assert_disjoint(df: pd.DataFrame, col: str = "split") -> None:
    n = df.groupby("lesion_id")[col].nunique()
    assert (n == 1).all(), f"groups in two {col}s: {list(n.index[n > 1][:5])}"


def test_split_columns_order_and_fractions_per_class() -> None:
    t = make_table()
    s = make_split(t, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert list(s.columns) == ["image_id", "lesion_id", "label", "split"]
    assert list(s["image_id"]) == list(t.frame["image_id"]) and set(s["split"]) == {"train", "val", "test"}
    assert list(s["lesion_id"]) == list(t.frame["lesion_id"])
    assert_disjoint(s)
    for cls, g in s.groupby("label"):
        n = len(g)
        for split, frac in (("val", 0.2), ("test", 0.1), ("train", 0.7)):
            got = int((g["split"] == split).sum())
            assert abs(got - frac * n) <= 4, (cls, split, got, frac * n)  # within one lesion (<= 4 images)
    overall = s["split"].value_counts(normalize=True)
    assert overall["val"] == pytest.approx(0.2, abs=0.01) and overall["test"] == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("seed", range(8))
def test_splits_are_lesion_disjoint_for_any_seed(seed: int) -> None:
    t = make_table(seed)
    f = t.frame.copy()
    f.loc[f.index[:6], "lesion_id"] = "L_shared"  # a group with mixed labels must not be cut either
    f.loc[f.index[6:9], "lesion_id"] = pd.NA  # rows without lesion id are their own groups
    t = LesionTable(f, t.classes, t.source, t.group_key)
    s = make_split(t, seed=seed)
    assert_disjoint(s)
    assert s.loc[6:8, "lesion_id"].tolist() == t.frame["image_id"].iloc[6:9].tolist()
    k = make_kfold(t, k=4, seed=seed)
    assert_disjoint(k, "fold")


def test_split_is_reproducible_and_seed_dependent_and_row_order_free() -> None:
    t = make_table()
    a, b, c = (make_split(t, seed=s) for s in (7, 7, 8))
    pd.testing.assert_frame_equal(a, b)
    assert manifest_hash(a) == manifest_hash(b) != manifest_hash(c)
    assert (a["split"] != c["split"]).mean() > 0.1
    shuffled = t.subset(np.ones(len(t), bool))
    shuffled.frame = t.frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    assert manifest_hash(make_split(shuffled, seed=7)) == manifest_hash(a)


def test_val_fraction_zero_gives_no_val() -> None:
    s = make_split(make_table(), val_fraction=0, test_fraction=0.25)
    assert set(s["split"]) == {"train", "test"}
    assert (s["split"] == "test").mean() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"val_fraction": -0.1}, r"The 'val_fraction' parameter must be a number with 0 <= val_fraction < 1. Got -0.1"),
        ({"test_fraction": 0}, r"The 'test_fraction' parameter must be a number with 0 < test_fraction < 1. Got 0"),
        ({"test_fraction": 1.0}, r"'test_fraction' parameter .* Got 1.0 instead"),
        ({"test_fraction": float("nan")}, r"'test_fraction' parameter .* Got nan instead"),
        ({"val_fraction": True}, r"'val_fraction' parameter .* Got True instead"),
        ({"val_fraction": "0.1"}, r"'val_fraction' parameter .* Got '0.1' instead"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be < 1 .* Got 0.5 \+ 0.5"),
        ({"seed": -1}, r"The 'seed' parameter must be an int in \[0, 2\*\*32\). Got -1"),
        ({"seed": 1.5}, r"The 'seed' parameter must be an int .* Got 1.5"),
    ],
)
def test_split_parameter_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_split(make_table(), **kw)


def test_mixed_label_group_goes_by_majority_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    f = pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "lesion_id": ["L1", "L1", "L1", "L2", "L3", "L4"],
            "label": ["MEL", "NV", "NV", "NV", "MEL", "NV"],
            "path": pd.NA,
        }
    )
    t = LesionTable(f, ("MEL", "NV"), "isic2019", "lesion_id")
    with caplog.at_level(logging.WARNING):
        s = make_split(t, val_fraction=0.0, test_fraction=0.3, seed=0)
    assert "1 group(s) hold images with different labels" in caplog.text and "['L1']" in caplog.text
    assert s.loc[s["lesion_id"] == "L1", "split"].nunique() == 1
    assert s.attrs["n_mixed_groups"] == 1


def test_split_by_image_warns_and_records_note(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = make_table(group_key="image_id")
    with caplog.at_level(logging.WARNING):
        s = make_split(t)
    assert "no lesion id: split by image" in caplog.text
    assert list(s["lesion_id"]) == list(s["image_id"])
    write_manifest(s, tmp_path / "m.csv")
    info = json.loads((tmp_path / "m.json").read_text())
    assert info["grouped_by_lesion"] is False and info["note"] == BY_IMAGE_NOTE and info["group_key"] == "image_id"


def test_rare_class_missing_from_a_split_warns(caplog: pytest.LogCaptureFixture) -> None:
    t = make_table(lesions={"NV": 50, "DF": 1})
    with caplog.at_level(logging.WARNING):
        make_split(t)
    assert "Class DF has no image in the val split" in caplog.text


def test_group_ids_fill_missing_with_image_id() -> None:
    f = pd.DataFrame({"image_id": ["a", "b"], "lesion_id": ["L", pd.NA], "label": "NV", "path": pd.NA})
    assert list(group_ids(LesionTable(f, ("NV",), "isic2019", "lesion_id"))) == ["L", "b"]


# ---------------------------------------------------------------- k-fold


def test_kfold_grouped_stratified_reproducible() -> None:
    t = make_table()
    k = make_kfold(t, k=5, seed=1)
    assert list(k.columns) == ["image_id", "lesion_id", "label", "fold"] and sorted(set(k["fold"])) == [0, 1, 2, 3, 4]
    assert_disjoint(k, "fold")
    nv = k[k["label"] == "NV"]["fold"].value_counts(normalize=True)
    assert nv.min() > 0.15 and nv.max() < 0.25
    pd.testing.assert_frame_equal(k, make_kfold(t, k=5, seed=1))
    assert not k["fold"].equals(make_kfold(t, k=5, seed=2)["fold"])


def test_kfold_errors() -> None:
    with pytest.raises(ValueError, match=r"The 'k' parameter must be an int >= 2. Got 1"):
        make_kfold(make_table(), k=1)
    small = make_table(lesions={"NV": 2, "MEL": 1})
    with pytest.raises(ValueError, match=r"The 'k' parameter must be at most the number of groups \(3\). Got 5"):
        make_kfold(small, k=5)


def test_kfold_split_holds_out_test_with_fold_minus_one(tmp_path: Path) -> None:
    t = make_table()
    m = make_kfold_split(t, k=3, test_fraction=0.2, seed=0)
    assert set(m["split"]) == {"train", "test"}
    assert (m.loc[m["split"] == "test", "fold"] == -1).all() and set(m.loc[m["split"] == "train", "fold"]) == {0, 1, 2}
    assert_disjoint(m)
    assert_disjoint(m, "fold")
    write_manifest(m, tmp_path / "k.csv")
    df, info = read_manifest(tmp_path / "k.csv")
    assert info["k"] == 3 and set(info["fold_counts"]) == {"0", "1", "2"}
    parts = apply_manifest(t, df, fold=1)
    assert len(parts["val"]) == (m["fold"] == 1).sum() and len(parts["test"]) == (m["fold"] == -1).sum()
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == len(t)
    with pytest.raises(ValueError, match=r"The 'fold' parameter must be an int in 0..2. Got 3"):
        apply_manifest(t, df, fold=3)


# ---------------------------------------------------------------- manifests


def test_manifest_hash_is_canonical() -> None:
    s = make_split(make_table())
    h = manifest_hash(s)
    assert manifest_hash(s.sample(frac=1.0, random_state=0)) == h  # row order does not matter
    assert manifest_hash(s[["split", "label", "lesion_id", "image_id"]]) == h  # nor column order
    changed = s.copy()
    changed.loc[changed["lesion_id"] == changed["lesion_id"].iloc[0], "split"] = "moved"
    changed.loc[changed["split"] == "moved", "split"] = "test" if s["split"].iloc[0] != "test" else "val"
    assert manifest_hash(changed) != h


def test_write_read_roundtrip_and_sidecar(tmp_path: Path) -> None:
    t = make_table()
    s = make_split(t, seed=5)
    path = tmp_path / "sub" / "manifest.csv"
    h = write_manifest(s, path, info={"note_from_user": "x"})
    assert hashlib.sha256(path.read_bytes()).hexdigest() == h == manifest_hash(s)
    info = json.loads((tmp_path / "sub" / "manifest.json").read_text())
    assert info["hash"] == h and info["seed"] == 5 and info["val_fraction"] == 0.15 and info["test_fraction"] == 0.15
    assert info["group_key"] == "lesion_id" and info["grouped_by_lesion"] is True and info["source"] == "ham10000"
    assert "note" not in info and info["note_from_user"] == "x" and info["n_images"] == len(t)
    assert info["counts"]["test"]["DF"] == int(((s["label"] == "DF") & (s["split"] == "test")).sum())
    df, info2 = read_manifest(path)
    assert info2 == info
    pd.testing.assert_frame_equal(
        df.sort_values("image_id").reset_index(drop=True),
        s.sort_values("image_id").reset_index(drop=True),
        check_dtype=False,
    )


def test_read_manifest_detects_edits_and_bad_files(tmp_path: Path) -> None:
    s = make_split(make_table())
    path = tmp_path / "m.csv"
    write_manifest(s, path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ("," + ("val" if lines[1].endswith("train") else "train"))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Split manifest .*m.csv was edited after it was written: .* sidecar m.json"):
        read_manifest(path)
    (tmp_path / "m.json").unlink()
    with pytest.raises(DataError, match=r"has no sidecar .*m.json; cannot verify it"):
        read_manifest(path)
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(DataError, match=r"Sidecar .*m.json is not valid JSON"):
        read_manifest(path)
    with pytest.raises(DataError, match=r"Split manifest not found: .*other.csv"):
        read_manifest(tmp_path / "other.csv")


def _write_raw(path: Path, df: pd.DataFrame) -> Path:
    """A manifest with a matching sidecar hash, bypassing write_manifest's checks."""
    path.write_text(df.to_csv(index=False))
    h = hashlib.sha256(df.sort_values("image_id").to_csv(index=False, lineterminator="\n").encode()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps({"hash": h}))
    return path


@pytest.mark.parametrize(
    ("df", "match"),
    [
        (
            pd.DataFrame({"image_id": ["a"], "label": ["NV"], "split": ["train"]}),
            r"missing column\(s\) \['lesion_id'\]: expected \['image_id', 'lesion_id', 'label', 'split'\]",
        ),
        (
            pd.DataFrame(
                {
                    "image_id": ["a", "b"],
                    "lesion_id": ["L1", "L2"],
                    "label": ["NV", "NV"],
                    "split": ["train", "holdout"],
                }
            ),
            r"invalid split value\(s\) \['holdout'\] on CSV lines \[3\]; expected one of \['train', 'val', 'test'\]",
        ),
        (
            pd.DataFrame(
                {"image_id": ["a", "b"], "lesion_id": ["L1", "L1"], "label": ["NV", "NV"], "split": ["train", "test"]}
            ),
            r"1 group\(s\) \(lesion_id\) sit in more than one split, e.g. \{'L1': \['test', 'train'\]\}",
        ),
        (
            pd.DataFrame(
                {"image_id": ["a", "a"], "lesion_id": ["L1", "L1"], "label": ["NV", "NV"], "split": ["train", "train"]}
            ),
            r"image ids repeat, e.g. \['a'\]",
        ),
        (
            pd.DataFrame(
                {
                    "image_id": ["a", "b"],
                    "lesion_id": ["L1", "L2"],
                    "label": ["NV", "NV"],
                    "split": ["train", "test"],
                    "fold": [0, 0],
                }
            ),
            r"invalid fold value\(s\) on CSV lines \[3\]",
        ),
    ],
)
def test_read_manifest_rejects_invalid_content(tmp_path: Path, df: pd.DataFrame, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_manifest(_write_raw(tmp_path / "m.csv", df))
    with pytest.raises(DataError, match=match):
        write_manifest(df, tmp_path / "w.csv", info={"group_key": "lesion_id"})


def test_read_manifest_rejects_empty_files_and_sidecars_without_hash(tmp_path: Path) -> None:
    empty = pd.DataFrame({"image_id": [], "lesion_id": [], "label": [], "split": []})
    with pytest.raises(DataError, match=r"Split manifest .*m.csv has no rows"):
        read_manifest(_write_raw(tmp_path / "m.csv", empty))
    blank = pd.DataFrame({"image_id": ["a"], "lesion_id": [""], "label": ["NV"], "split": ["train"]})
    with pytest.raises(DataError, match=r"column 'lesion_id' is empty on 1 row\(s\), CSV lines \[2\]"):
        read_manifest(_write_raw(tmp_path / "b.csv", blank))
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(DataError, match=r"Sidecar .*b.json has no 'hash' entry"):
        read_manifest(tmp_path / "b.csv")
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "e.json").write_text('{"hash": "x"}')
    with pytest.raises(DataError, match=r"Split manifest .*e.csv is empty"):
        read_manifest(tmp_path / "e.csv")
    folds = pd.DataFrame({"image_id": ["a", "b"], "lesion_id": ["L", "L"], "label": ["NV", "NV"], "fold": [0, 1]})
    with pytest.raises(DataError, match=r"1 group\(s\) \(lesion_id\) sit in more than one fold"):
        write_manifest(folds, tmp_path / "f.csv", info={"group_key": "lesion_id"})


def test_write_manifest_needs_group_key(tmp_path: Path) -> None:
    df = pd.DataFrame({"image_id": ["a"], "lesion_id": ["L"], "label": ["NV"], "split": ["train"]})
    with pytest.raises(ValueError, match=r"The 'info' parameter must give 'group_key'"):
        write_manifest(df, tmp_path / "m.csv")


# ---------------------------------------------------------------- apply_manifest


def test_apply_manifest_partitions_the_table(tmp_path: Path) -> None:
    t = make_table()
    s = make_split(t, seed=2)
    write_manifest(s, tmp_path / "m.csv")
    parts = apply_manifest(t, tmp_path / "m.csv")
    assert sorted(parts) == ["test", "train", "val"]
    for name, sub in parts.items():
        assert set(sub.frame["image_id"]) == set(s.loc[s["split"] == name, "image_id"])
        assert sub.classes == t.classes and sub.group_key == t.group_key
    assert sum(len(p) for p in parts.values()) == len(t)


def test_apply_manifest_errors(caplog: pytest.LogCaptureFixture) -> None:
    t = make_table()
    s = make_split(t)
    extra = pd.concat(
        [
            s,
            pd.DataFrame(
                {
                    "image_id": ["ghost1", "ghost2"],
                    "lesion_id": ["G1", "G2"],
                    "label": ["NV", "NV"],
                    "split": ["train", "test"],
                }
            ),
        ]
    )
    with pytest.raises(
        DataError, match=r"2 image id\(s\) of the manifest are not in the ham10000 table, e.g. \['ghost1'"
    ):
        apply_manifest(t, extra)
    relabelled = s.copy()
    relabelled.loc[0, "label"] = "DF" if relabelled.loc[0, "label"] != "DF" else "NV"
    with pytest.raises(DataError, match=r"1 image\(s\) have a different label in the manifest than in the table"):
        apply_manifest(t, relabelled)
    by_image = make_split(LesionTable(t.frame.assign(lesion_id=pd.NA), t.classes, t.source, "image_id"), seed=0)
    with pytest.raises(
        DataError, match=r"grouped by lesion_id\): \d+ group\(s\) \(lesion_id\) sit in more than one split"
    ):
        apply_manifest(t, by_image)  # an image-level split applied to lesion-grouped data would leak
    with caplog.at_level(logging.WARNING):
        parts = apply_manifest(t, s.iloc[10:])
    assert "10 image(s) of the ham10000 table are not in the manifest" in caplog.text
    assert sum(len(p) for p in parts.values()) == len(t) - 10
    folds = make_kfold(t, k=3)
    with pytest.raises(DataError, match=r"The manifest has folds but no 'split' column: pass fold=0..k-1"):
        apply_manifest(t, folds)
    with pytest.raises(DataError, match=r"The manifest has no 'fold' column, so fold=0 cannot be applied"):
        apply_manifest(t, s, fold=0)
