"""Patient metadata checks and the record's ``metadata`` summary (no prediction)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinlesion.ensemble.bundle import load_bundle
from skinlesion.records.metadata import MetadataError, metadata_summary, normalise_metadata, normalise_records

FUSION = "m0-test_efficientnet"
OLD = {"age": 80, "sex": "male", "site": "back"}


def test_values_are_normalised_and_invalid_ones_name_field_and_value() -> None:
    assert normalise_metadata({"age": " 55 ", "sex": "MALE", "site": " Lower  Extremity"}) == {
        "age": 55.0, "sex": "male", "site": "lower extremity"
    }
    assert normalise_metadata({"age": "", "sex": "unknown", "site": None}) is None
    assert normalise_metadata(None) is None
    for record, field, match in [
        ({"age": "abc"}, "age", r"The 'age' value of the form must be a number of years in \[0, 120\].*Got 'abc'"),
        ({"age": 130}, "age", r"'age' value .* Got 130"),
        ({"sex": "x"}, "sex", r"The 'sex' value of the form must be 'male', 'female' or missing.*Got 'x'"),
        ({"site": 3}, "site", r"'site' value .* Got 3"),
        ({"weight": 70}, "weight", r"unknown field\(s\) \['weight'\]"),
    ]:
        with pytest.raises(MetadataError, match=match) as e:
            normalise_metadata(record, "the form")
        assert e.value.field == field and e.value.reason == "invalid_metadata"
    assert normalise_records([None, {"sex": ""}], 2) is None  # all missing: as if none was given
    assert normalise_records([None, OLD], 2) == [{"age": None, "sex": None, "site": None}, {"age": 80.0, "sex": "male", "site": "back"}]
    with pytest.raises(MetadataError, match=r"one record \(a dict or None\) per image \(2\). Got 1 instead"):
        normalise_records([OLD], 2)
    with pytest.raises(MetadataError, match=r"metadata\[1\]"):
        normalise_records([OLD, {"age": -1}], 2)


def test_summary_says_what_was_used_and_ignored(fusion_bundle: Path, calibrated_bundle: Path) -> None:
    bundle = load_bundle(fusion_bundle)
    s = metadata_summary(bundle, normalise_metadata({"age": 55, "sex": "male", "site": "elbow"}))
    assert s["used"] == {"age": 55.0, "sex": "male", "site": None}
    assert s["members_using_metadata"] == [FUSION] and s["features"] == ["age", "sex", "site"]
    assert "not a site the model was trained with" in s["ignored"]["site"]
    assert metadata_summary(bundle, None) == {"used": None, "members_using_metadata": [FUSION], "features": ["age", "sex", "site"]}
    image_only = metadata_summary(load_bundle(calibrated_bundle), normalise_metadata(OLD))
    assert image_only["used"] is None and image_only["members_using_metadata"] == []
    assert set(image_only["ignored"]) == {"age", "sex", "site"}
