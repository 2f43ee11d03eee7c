"""The shared HAM10000 (8,511 images): read, verify headers, split by lesion, check and time it."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from skinlesion.classes import ISIC2018_CLASSES
from skinlesion.data.readers import read_ham10000
from skinlesion.data.splits import apply_manifest, make_split, manifest_hash, read_manifest, write_manifest

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def ham(ham10000_root: Path):
    start = time.perf_counter()
    table = read_ham10000(ham10000_root)  # opens every image header
    return table, time.perf_counter() - start


def test_read_real_ham10000(ham, record_property) -> None:
    table, seconds = ham
    record_property("read_and_verify_seconds", round(seconds, 3))
    print(f"\nHAM10000: read + verified {len(table)} image headers in {seconds:.2f} s")
    meta = pd.read_csv(Path(table.frame["path"].iloc[0]).parents[1] / "HAM10000_metadata.csv")
    assert len(table) == len(meta) and table.skipped == []
    assert table.classes == ISIC2018_CLASSES and table.group_key == "lesion_id"
    assert table.frame["lesion_id"].nunique() == meta["lesion_id"].nunique()
    assert table.frame["label"].value_counts().to_dict() == meta["dx"].str.upper().value_counts().to_dict()
    assert seconds < 30, f"reading + verifying {len(table)} headers took {seconds:.1f} s"
    img = table.load_image(0)
    assert img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3


def test_real_split_is_lesion_disjoint_stratified_and_seeded(ham, tmp_path: Path, record_property) -> None:
    table, _ = ham
    start = time.perf_counter()
    split = make_split(table, val_fraction=0.15, test_fraction=0.15, seed=42)
    record_property("split_seconds", round(time.perf_counter() - start, 3))
    n_splits_per_lesion = split.groupby("lesion_id")["split"].nunique()
    assert (n_splits_per_lesion == 1).all()
    assert (split["lesion_id"] == table.frame["lesion_id"].astype(str)).all()
    share = pd.crosstab(split["label"], split["split"], normalize="index")
    for cls in ISIC2018_CLASSES:  # smallest class (DF) has 95 images
        assert share.loc[cls, "val"] == pytest.approx(0.15, abs=0.03), cls
        assert share.loc[cls, "test"] == pytest.approx(0.15, abs=0.03), cls
    again = make_split(table, val_fraction=0.15, test_fraction=0.15, seed=42)
    other = make_split(table, val_fraction=0.15, test_fraction=0.15, seed=43)
    assert manifest_hash(split) == manifest_hash(again) != manifest_hash(other)
    h = write_manifest(split, tmp_path / "ham.csv")
    df, info = read_manifest(tmp_path / "ham.csv")
    assert info["hash"] == h and info["grouped_by_lesion"] is True
    parts = apply_manifest(table, df)
    lesions = [set(parts[s].frame["lesion_id"]) for s in ("train", "val", "test")]
    assert not (lesions[0] & lesions[1] or lesions[0] & lesions[2] or lesions[1] & lesions[2])
    assert sum(len(p) for p in parts.values()) == len(table)
