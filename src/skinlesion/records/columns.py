"""The record's scalar fields as columns: predictions.csv and the audit log read them from here.

:data:`COLUMNS` maps a column name to where its value sits in a
:class:`~skinlesion.records.schema.PredictionRecord` (a dotted path), in predictions.csv order, and
:data:`BUNDLE_COLUMNS` names the model; :func:`record_columns` reads them, with None where a part is absent (no uncertainty computed, no
metadata given, a partial record). A new record field becomes a predictions.csv column by one
line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from skinlesion.records.metadata import FIELDS

COLUMNS: dict[str, str] = {
    "diagnosis": "prediction.diagnosis",
    "flags": "prediction.flags",
    "refer": "prediction.referral.refer",
    "malignant_probability": "prediction.referral.malignant_probability",
    "out_of_distribution": "ood.gated",
    "ood_score": "ood.score",
    "policy": "prediction.policy",
    "decision": "prediction.decision",
    "decided_by": "prediction.decided_by",
    "threshold_fired": "prediction.threshold_fired",
    "operating_point": "prediction.operating_point_name",
    "argmax": "prediction.argmax",
    "review_flag": "uncertainty.review.flag",
    "review_score_name": "uncertainty.review.score",
    "review_value": "uncertainty.review.value",
    "predictive_entropy": "uncertainty.predictive_entropy",
    "aleatoric_expected_entropy": "uncertainty.aleatoric_expected_entropy",
    "epistemic_mutual_information": "uncertainty.epistemic_mutual_information",
    "max_probability": "uncertainty.max_probability",
    **{f: f"metadata.used.{f}" for f in FIELDS},
}
#: The model that predicted (predictions.csv puts them after the input's path and sha256).
BUNDLE_COLUMNS: dict[str, str] = {"bundle_id": "bundle.id", "bundle_name": "bundle.name", "engine": "bundle.engine"}


def record_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    """``{column: value}`` for every :data:`COLUMNS` and :data:`BUNDLE_COLUMNS` entry (None where the
    record has no value). ``flags`` is the classes whose flag is raised, joined by ``;`` ("" when none)."""
    out = {name: _get(record, path) for name, path in {**COLUMNS, **BUNDLE_COLUMNS}.items()}
    if isinstance(out["flags"], list):
        out["flags"] = ";".join(f["class_name"] for f in out["flags"] if isinstance(f, Mapping) and f.get("flagged"))
    return out


def _get(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value
