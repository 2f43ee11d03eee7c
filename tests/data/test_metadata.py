"""Metadata encoder (age, sex, site), the readers' metadata columns and the synthetic metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.data.readers import read_ham10000
from skinlesion.data.loader import LesionDataset
from skinlesion.data.metadata import FEATURES, MetadataEncoder
from skinlesion.data.synthetic import write_synthetic_dataset

TRAIN = pd.DataFrame(
    {
        "image_id": ["a", "b", "c", "d"],
        "age": [40.0, 60.0, math.nan, 50.0],
        "sex": ["male", "female", pd.NA, "MALE"],
        "site": ["back", "face", "back", pd.NA],
    }
)
NAMES = [
    "age_z", "age_missing", "sex=male", "sex=female", "sex=unknown", "site=back", "site=face", "site=unknown",
]


def test_layout_and_values() -> None:
    enc = MetadataEncoder().fit(TRAIN)
    assert list(enc.feature_names_) == NAMES and enc.n_features == 8
    assert enc.age_mean_ == pytest.approx(50.0) and enc.age_std_ == pytest.approx(np.std([40, 60, 50]))
    got = enc.encode([{"age": 60, "sex": "female", "site": "Face"}, {"age": "40", "sex": " Male "}])
    z = 10 / np.std([40, 60, 50])
    np.testing.assert_allclose(got, [[z, 0, 0, 1, 0, 0, 1, 0], [-z, 0, 1, 0, 0, 0, 0, 1]], rtol=1e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize(
    "record",
    [{}, {"age": None, "sex": None, "site": None}, {"age": "", "sex": "unknown", "site": "UNKNOWN"},
     {"age": float("nan"), "sex": pd.NA, "site": " "}],
)
def test_every_form_of_missing_gives_the_missing_vector(record: dict) -> None:
    enc = MetadataEncoder().fit(TRAIN)
    np.testing.assert_array_equal(enc.encode([record])[0], [0, 1, 0, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(enc.missing_vector(), [0, 1, 0, 0, 1, 0, 0, 1])


def test_fitted_on_train_only_and_unseen_site_is_unknown() -> None:
    enc = MetadataEncoder().fit(TRAIN)
    state = enc.to_dict()
    val = pd.DataFrame({"image_id": ["v"], "age": [90.0], "sex": ["female"], "site": ["ear"]})
    out = enc.encode_frame(val)
    assert enc.to_dict() == state  # encoding never refits
    assert out[0, NAMES.index("site=unknown")] == 1 and out[0, NAMES.index("site=back")] == 0
    assert enc.sites_ == ("back", "face")  # the train vocabulary only
    assert out[0, 0] == pytest.approx((90 - 50) / np.std([40, 60, 50]))


def test_round_trip_through_json_gives_the_same_encoding() -> None:
    enc = MetadataEncoder(["site", "age"]).fit(TRAIN)
    assert enc.features == ("age", "site")  # canonical order whatever the order given
    again = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    records = [{"age": 33, "site": "back"}, {"site": "nose"}, {}]
    np.testing.assert_array_equal(again.encode(records), enc.encode(records))
    assert again.feature_names_ == enc.feature_names_ == ("age_z", "age_missing", "site=back", "site=face", "site=unknown")


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"age": "abc"}, r"'age' value of records\[0\] must be a number of years in \[0, 120\].*Got 'abc'"),
        ({"age": -1}, r"'age' value.*Got -1 instead"),
        ({"age": 121}, r"'age' value.*Got 121 instead"),
        ({"age": float("inf")}, r"'age' value.*Got inf instead"),
        ({"age": True}, r"'age' value.*Got True instead"),
        ({"sex": "x"}, r"'sex' value of records\[0\] must be 'male', 'female' or missing.*Got 'x'"),
        ({"sex": 1}, r"'sex' value.*Got 1 instead"),
        ({"site": 5}, r"'site' value of records\[0\] must be an anatomical site name.*Got 5"),
        ({"localization": "back"}, r"records\[0\] has unknown key\(s\) \['localization'\]"),
    ],
)
def test_invalid_values_name_the_field_and_value(record: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MetadataEncoder().fit(TRAIN).encode([record])


def test_unused_features_are_checked_but_ignored() -> None:
    enc = MetadataEncoder(["age"]).fit(TRAIN)
    assert enc.encode([{"age": 50, "site": "back", "sex": "female"}]).tolist() == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="'sex' value"):
        enc.encode([{"sex": "?"}])


def test_bad_training_values_name_the_image() -> None:
    bad = TRAIN.assign(age=[40.0, 200.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"'age' value of image_id 'b'.*Got 200.0"):
        MetadataEncoder().fit(bad)


def test_errors_of_use() -> None:
    with pytest.raises(ValueError, match=r"'features' parameter must list distinct features among \['age', 'sex', 'site'\]"):
        MetadataEncoder(["age", "weight"])
    with pytest.raises(ValueError, match="'features' parameter"):
        MetadataEncoder([])
    with pytest.raises(RuntimeError, match=r"not fitted yet: call fit\(train_table\) first"):
        MetadataEncoder().encode([{}])
    with pytest.raises(ValueError, match=r"no \['site'\] column"):
        MetadataEncoder().fit(TRAIN.drop(columns="site"))
    enc = MetadataEncoder().fit(TRAIN)
    with pytest.raises(ValueError, match="'records' parameter must be a list of dicts"):
        enc.encode({"age": 3})  # type: ignore[arg-type]
    state = enc.to_dict()
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['sites'\]"):
        MetadataEncoder.from_dict({k: v for k, v in state.items() if k != "sites"})
    with pytest.raises(ValueError, match="'feature_names'.*do not match"):
        MetadataEncoder.from_dict({**state, "sites": ["back"]})
    with pytest.raises(ValueError, match="'age_mean'/'age_std' must be finite with std > 0"):
        MetadataEncoder.from_dict({**state, "age_std": 0})


def test_all_missing_feature_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    enc = MetadataEncoder().fit(TRAIN.assign(age=math.nan))
    assert "'age' is missing for every training row" in caplog.text
    assert (enc.age_mean_, enc.age_std_) == (0.0, 1.0)


def test_frame_without_a_column_encodes_it_as_missing(caplog: pytest.LogCaptureFixture) -> None:
    enc = MetadataEncoder().fit(TRAIN)
    out = enc.encode_frame(TRAIN.drop(columns="sex"))
    assert (out[:, NAMES.index("sex=unknown")] == 1).all() and "no ['sex'] column" in caplog.text


def _ham(root: Path, rows: list[str]) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i, row in enumerate(rows):
        Image.new("RGB", (8, 6), (200, 120, 100)).save(root / "images" / f"ISIC_{i}.jpg")
        lines.append(f"HAM_{i},ISIC_{i},nv,histo,{row}")
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_ham10000_reader_reads_unknown_as_missing_and_dataset_returns_vectors(tmp_path: Path) -> None:
    table = read_ham10000(_ham(tmp_path / "ham", ["55.0,male,back", ",unknown,unknown", "30.0,female,face"]))
    assert table.frame["sex"].isna().tolist() == [False, True, False]
    assert table.frame["site"].isna().tolist() == [False, True, False]
    assert np.isnan(table.frame["age"].iloc[1])
    enc = MetadataEncoder().fit(table)
    np.testing.assert_array_equal(enc.encode_frame(table.frame)[1], enc.missing_vector())
    tf = lambda image: {"image": image / 255.0}  # noqa: E731
    plain = LesionDataset(table, tf)[0]
    with_meta = LesionDataset(table, tf, metadata=enc.encode_frame(table.frame))[2]
    assert len(plain) == 3 and len(with_meta) == 4
    assert torch.equal(with_meta[3], torch.from_numpy(enc.encode([{"age": 30, "sex": "female", "site": "face"}])[0]))
    with pytest.raises(ValueError, match=r"'metadata' parameter must have one row per table row, shape \(3, D\)"):
        LesionDataset(table, tf, metadata=np.zeros((2, 4)))


def test_synthetic_lesions_have_plausible_metadata(tmp_path: Path) -> None:
    table = read_ham10000(write_synthetic_dataset(tmp_path / "syn", n_lesions_per_class=40, size=(24, 32), seed=0))
    f = table.frame
    assert set(FEATURES) <= set(f.columns)
    assert f["age"].dropna().between(5, 85).all()
    assert set(f["sex"].dropna()) == {"male", "female"} and f["site"].nunique() >= 8
    lesions = f.drop_duplicates("lesion_id")
    missing = lesions[["age", "sex", "site"]].isna().mean()
    assert (missing > 0).any() and (missing < 0.1).all()  # a few missing values, as in HAM10000
    # age and site depend on the class as in HAM10000: naevi younger than carcinomas, DF on the legs
    age = lesions.groupby("label")["age"].mean()
    assert age["NV"] + 10 < age["BCC"] and age["NV"] + 10 < age["AKIEC"]
    df_sites = lesions.loc[lesions["label"] == "DF", "site"].value_counts(normalize=True)
    assert df_sites.get("lower extremity", 0) > 0.4
    MetadataEncoder().fit(table)  # every value is valid
