"""ensemble/bundle_schema.py: the typed bundle.json reads every bundle written so far, keeps what it
does not declare, names the field of every error, and never changes what write_meta writes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from skinlesion.ensemble.bundle import default_bundle_dir, validate_meta, write_meta
from skinlesion.ensemble.bundle_schema import BundleError, BundleMeta, ThresholdSpec, parse_meta


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return json.loads((default_bundle_dir() / "bundle.json").read_text())


def test_the_shipped_bundle_reads_as_typed_fields(shipped: dict[str, Any]) -> None:
    spec = validate_meta(shipped)
    assert isinstance(spec, BundleMeta) and spec.classes == shipped["classes"]
    assert [m.name for m in spec.members] == [m["name"] for m in shipped["members"]]
    assert spec.tta.policy.views == tuple(shipped["tta"]["views"]) and spec.tta.average == "prob"
    assert spec.temperature.mode == "ensemble" and spec.temperature.ensemble == shipped["temperature"]["ensemble"]
    raw = shipped["decision"]
    assert spec.decision.priority == raw["priority"] and spec.decision.conflict == raw["conflict"]
    assert {c: t.threshold for c, t in spec.decision.thresholds.items()} == {c: t["threshold"] for c, t in raw["thresholds"].items()}
    assert spec.decision.thresholds["MEL"].target_sensitivity == raw["thresholds"]["MEL"]["target_sensitivity"]
    point = spec.decision.without_metadata
    assert point is not None and point.temperature.ensemble == raw["without_metadata"]["temperature"]["ensemble"]
    assert point.validation is not None and point.validation.per_class["MEL"].sensitivity == raw["without_metadata"]["validation"]["per_class"]["MEL"]["sensitivity"]  # type: ignore[index]
    assert spec.provenance.split_hash == shipped["provenance"]["split_hash"]
    assert [h.action for h in spec.history] == [h["action"] for h in shipped["history"]]
    assert spec.review is not None and spec.review.n_samples == shipped["review"]["n_samples"]
    assert spec.cross_fitting is not None and spec.cross_fitting.member_folds == {m["name"]: i for i, m in enumerate(shipped["members"])}
    assert spec.decision.policy == raw["policy"] == "diagnosis" and spec.review.method == shipped["review"]["method"] == "ensemble"
    assert spec.decision.diagnosis is not None and spec.decision.diagnosis.log_weights == raw["diagnosis"]["log_weights"]
    assert spec.decision.referral is not None and spec.decision.referral.threshold == raw["referral"]["threshold"]
    assert spec.decision.ood is not None and spec.decision.ood.threshold == raw["ood"]["threshold"]


def test_what_the_schema_does_not_declare_is_kept(shipped: dict[str, Any]) -> None:
    meta = copy.deepcopy(shipped)
    meta["notes"] = ["added by another tool"]
    meta["history"].append({"at": "2027-01-01T00:00:00+00:00", "action": "audit", "by": "someone"})
    meta["decision"]["thresholds"]["MEL"]["comment"] = "kept"
    spec = validate_meta(meta)
    assert spec.model_extra == {"notes": ["added by another tool"]}
    assert spec.history[-1].action == "audit" and spec.history[-1].model_extra == {"by": "someone"}
    assert spec.decision.thresholds["MEL"].model_extra == {"comment": "kept"}


def test_numbers_that_records_copy_keep_their_json_type(shipped: dict[str, Any]) -> None:
    meta = copy.deepcopy(shipped)
    meta["decision"]["thresholds"]["MEL"]["threshold"] = 1
    meta["review"]["target"] = 1
    spec = validate_meta(meta)
    assert type(spec.decision.thresholds["MEL"].threshold) is int and type(spec.review.target) is int  # type: ignore[union-attr]


def test_new_decision_parts_and_cross_fitting_are_optional_typed_fields(shipped: dict[str, Any]) -> None:
    meta = copy.deepcopy(shipped)
    meta["decision"]["diagnosis"] = {"rule": "balanced", "log_weights": {c: 0.0 for c in meta["classes"]}, "limit": 1.0}
    meta["decision"]["referral"] = {"threshold": 0.2, "cls": "malignant", "malignant_classes": ["MEL", "BCC", "AKIEC"]}
    meta["decision"]["ood"] = {"score": "knn", "threshold": 0.4, "quantile": 0.95, "members": ["m0"]}
    meta["decision"]["policy"] = "priority-threshold"
    meta["cross_fitting"] = {"k": 5, "member_folds": {m["name"]: i for i, m in enumerate(meta["members"])}, "validation": "out-of-fold"}
    spec = validate_meta(meta)
    assert spec.decision.diagnosis.log_weights["MEL"] == 0.0 and spec.decision.diagnosis.model_extra == {"limit": 1.0}  # type: ignore[union-attr]
    assert spec.decision.referral.threshold == 0.2 and spec.decision.referral.malignant_classes == ["MEL", "BCC", "AKIEC"]  # type: ignore[union-attr]
    assert spec.decision.ood.threshold == 0.4 and spec.decision.policy == "priority-threshold"  # type: ignore[union-attr]
    assert spec.cross_fitting is not None and spec.cross_fitting.k == 5 and list(spec.cross_fitting.member_folds.values()) == list(range(len(meta["members"])))
    meta["cross_fitting"] = {"k": 5}
    with pytest.raises(BundleError, match=r"cross_fitting\.member_folds is required"):
        validate_meta(meta)
    meta = copy.deepcopy(shipped)
    meta["decision"]["policy"] = "default"
    with pytest.raises(BundleError, match=r"decision\.policy must be one of \('diagnosis', 'priority-threshold'\)"):
        validate_meta(meta)


def test_review_point_merges_the_without_metadata_threshold(shipped: dict[str, Any]) -> None:
    review = validate_meta(shipped).review
    assert review is not None and review.point(False) is review
    hidden = review.point(True)
    assert hidden.threshold == shipped["review"]["without_metadata"]["threshold"] and hidden.score == review.score
    assert hidden.fitted_for == shipped["review"]["without_metadata"]["fitted_for"]
    meta = copy.deepcopy(shipped)
    del meta["review"]["without_metadata"]
    older = validate_meta(meta).review.point(True)  # type: ignore[union-attr]
    assert older.fitted_for is None and "fitted_for" in older.model_fields_set  # fitted before that point: refit


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m["members"][0].update(weight="0.5"), r"members\[0\] \(f0-\S+\): weight must be >= 0, got '0.5'"),
        (lambda m: m["members"].__setitem__(0, "m0"), r"members\[0\] must be a dict with \['name', "),
        (lambda m: m.update(format_version="two"), r"field 'format_version' must be an integer, got 'two'"),
        (lambda m: m.update(tta=["identity"]), r"field 'tta' is invalid: must be a dict \{views, average\}"),
        (lambda m: m["decision"].update(thresholds=["MEL"]), r"decision\.thresholds must be a dict \{class: \{threshold, \.\.\.\}\}"),
        (lambda m: m["decision"]["thresholds"].update(MEL=0.5), r"decision\.thresholds\.MEL must be a dict \{threshold, \.\.\.\}, got 0\.5"),
        (lambda m: m["decision"].update(conflict="best"), r"decision\.conflict must be one of \('priority', 'ratio'\), got 'best'"),
        (lambda m: m["decision"].update(priority=["XX"]), r"decision\.priority: .*unknown class\(es\) \['XX'\]"),
        (lambda m: m["decision"].update(without_metadata=None), r"decision\.without_metadata must be a dict with 'temperature' and 'thresholds', got None"),
        (lambda m: m["decision"]["without_metadata"].update(temperature=2.0), r"decision\.without_metadata\.temperature must be a dict with 'mode', got 2\.0"),
        (lambda m: m.update(provenance=[]), r"field 'provenance' must be a valid dictionary, got \[\]"),
        (lambda m: m["review"].update(n_samples="many"), r"review\.n_samples must be a valid integer.*got 'many'"),
        (lambda m: m["decision"].update(diagnosis={"log_weights": {"MEL": "up"}}), r"decision\.diagnosis\.log_weights\.MEL must be a valid number"),
    ],
)
def test_errors_name_the_field_and_what_it_must_be(shipped: dict[str, Any], change: Any, match: str) -> None:
    meta = copy.deepcopy(shipped)
    change(meta)
    with pytest.raises(BundleError, match=f"^bundle: {match}"):
        validate_meta(meta)


def test_every_error_is_named_at_once(shipped: dict[str, Any]) -> None:
    meta = copy.deepcopy(shipped)
    meta["temperature"]["mode"] = "auto"
    meta["decision"]["conflict"] = "best"
    with pytest.raises(BundleError, match=r"temperature\.mode must be one of .*; decision\.conflict must be one of"):
        parse_meta(meta, Path("/some/bundle"))
    with pytest.raises(BundleError, match=r"^/some/bundle/bundle\.json: must be a JSON object with \['format', .*got \[\]"):
        parse_meta([], Path("/some/bundle"))


def test_threshold_specs_validate_the_choice_dicts_of_calibration() -> None:
    spec = ThresholdSpec.model_validate({"cls": "MEL", "threshold": None, "status": "infeasible", "n_positive": 12})
    assert spec.threshold is None and spec.n_positive == 12 and spec.status == "infeasible"


def test_write_meta_writes_the_dict_unchanged(shipped: dict[str, Any], tmp_path: Path) -> None:
    write_meta(tmp_path, copy.deepcopy(shipped))
    assert (tmp_path / "bundle.json").read_bytes() == (default_bundle_dir() / "bundle.json").read_bytes()
    broken = copy.deepcopy(shipped)
    broken["members"][0]["weight"] = 2.0
    with pytest.raises(BundleError, match=f"{tmp_path / 'bundle.json'}: member weights must sum to 1"):
        write_meta(tmp_path, broken)
    assert (tmp_path / "bundle.json").read_bytes() == (default_bundle_dir() / "bundle.json").read_bytes()
