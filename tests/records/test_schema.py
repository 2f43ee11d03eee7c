"""The typed record: what the fillers produce is exactly what the schema declares (a key the schema
lacks would be dropped from the REST answers), and the columns read declared fields."""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import numpy as np
import pytest
from pydantic import TypeAdapter
from typing_extensions import get_type_hints, is_typeddict

from skinlesion.data.synthetic import generate_lesion
from skinlesion.ensemble.bundle import Bundle, load_bundle
from skinlesion.explain.pipeline import explain_image
from skinlesion.records import (
    BUNDLE_COLUMNS,
    COLUMNS,
    Explanation,
    PredictionRecord,
    bundle_ref,
    decision_records,
    metadata_summary,
    normalise_records,
    prediction_record,
    record_columns,
    uncertainty_records,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _typed_dict(tp: Any) -> Any:
    """The TypedDict a field holds (inside ``X | None``), else None."""
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else None
    return tp if is_typeddict(tp) else None


def _mismatches(value: Mapping[str, Any], td: Any, where: str = "") -> list[str]:
    """Keys not declared by ``td`` and required keys missing, recursively (dotted paths)."""
    hints = get_type_hints(td)
    out = [f"undeclared {where}{k}" for k in value if k not in hints]
    out += [f"missing {where}{k}" for k in td.__required_keys__ if k not in value]
    for k, v in value.items():
        sub = _typed_dict(hints.get(k))
        if sub is not None and isinstance(v, Mapping):
            out += _mismatches(v, sub, f"{where}{k}.")
    return out


def _records(bundle: Bundle, metadata: list[dict[str, Any] | None] | None = None) -> list[PredictionRecord]:
    images = [generate_lesion(c, seed=i, size=(48, 64), hair=False, vignette=False)[0] for i, c in enumerate(["MEL", "NV"])]
    records = normalise_records(metadata, len(images))
    pred = bundle.predict_images(images, metadata=records)
    unc = uncertainty_records(bundle, images, 2, metadata=records)
    return [
        prediction_record(bundle_ref(bundle, "torch"), p, unc[i], metadata_summary(bundle, records[i] if records else None))
        for i, p in enumerate(decision_records(bundle, pred))
    ]


def test_records_are_what_the_schema_declares(calibrated_bundle: Path, tiny_bundle: Path, fusion_bundle: Path) -> None:
    with_review = _records(load_bundle(calibrated_bundle))
    without_review = _records(load_bundle(tiny_bundle))
    fusion = _records(load_bundle(fusion_bundle), [{"age": 60, "sex": "male", "site": "elbow"}, None])
    assert with_review[0]["uncertainty"]["review"]["flag"] is not None  # type: ignore[index]
    assert without_review[0]["uncertainty"]["review"]["flag"] is None  # type: ignore[index]
    assert "ignored" in fusion[0]["metadata"]
    adapter = TypeAdapter(PredictionRecord)
    for rec in [*with_review, *without_review, *fusion]:
        assert _mismatches(rec, PredictionRecord) == []
        assert adapter.validate_python(rec) == rec  # what the REST service answers: the same values


def test_explanations_are_what_the_schema_declares(calibrated_bundle: Path) -> None:
    image = generate_lesion("MEL", seed=3, size=(64, 80), hair=False, vignette=False)[0]
    result, _ = explain_image(load_bundle(calibrated_bundle), image, mc_samples=2, concepts=False)
    assert _mismatches(result, Explanation) == []
    assert TypeAdapter(Explanation).validate_python(result) == result
    assert isinstance(result["attention"]["mass_in_lesion"], float) and np.isfinite(result["attention"]["lesion_area_fraction"])


def test_columns_name_declared_fields_and_tolerate_partial_records() -> None:
    for column, path in {**COLUMNS, **BUNDLE_COLUMNS}.items():
        td: Any = PredictionRecord
        for key in path.split("."):
            if td is None:  # inside a plain dict (metadata.used)
                break
            assert key in get_type_hints(td), f"{column}: {path} is not a field of the record"
            td = _typed_dict(get_type_hints(td)[key])
    partial = record_columns({"prediction": {"decision": "MEL"}, "uncertainty": None})
    assert partial["decision"] == "MEL" and partial["review_flag"] is None and partial["age"] is None
    assert list(partial) == [*COLUMNS, *BUNDLE_COLUMNS]


def test_comparisons_are_what_the_schema_declares(calibrated_bundle: Path) -> None:
    from skinlesion.data.synthetic import change_spec, fits_followup, render_followup, sample_spec
    from skinlesion.delivery.compare import compare_visits
    from skinlesion.delivery.engine import Predictor
    from skinlesion.records import Comparison

    spec = fits_followup(sample_spec("MEL", np.random.default_rng(0), size=(64, 80)), (64, 80), 0.5, 1.0, 0.0)
    pair = render_followup(spec, change_spec(spec, "growth", 0.5, np.random.default_rng(1)), 0, size=(64, 80))
    predictor = Predictor(load_bundle(calibrated_bundle), mc_samples=2)
    with_model, _ = compare_visits(pair.before, pair.after, predictor=predictor, before_spacing_mm=0.2, after_spacing_mm=0.2)
    without_model, _ = compare_visits(pair.before, pair.after)
    assert with_model["model"] is not None and without_model["model"] is None and without_model["before"]["record"] is None
    adapter = TypeAdapter(Comparison)
    for comparison in (with_model, without_model):
        assert _mismatches(comparison, Comparison) == []
        assert adapter.validate_python(comparison) == comparison
    assert _mismatches(with_model["before"]["record"], PredictionRecord) == []
