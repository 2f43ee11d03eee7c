"""How the model's output changed between two images of one lesion (``Comparison.model``).

:func:`model_change` compares two :class:`~skinlesion.records.schema.PredictionRecord`\\ s: the
probability of every class before and after, the decision, the review flag, and every other
decision, flag or category of the records that differs (any boolean or text field, found by walking
both records), so a field added to the record later (a clinical flag, a referral) is compared
without a change here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, cast

from skinlesion.metrics.classification import to_jsonable
from skinlesion.records.schema import ModelChange, PredictionRecord

#: Parts of a record that describe the model or the request, not this image's result.
_NOT_COMPARED = frozenset({"notice", "bundle", "metadata", "input"})
#: Text fields that explain rather than decide (they change with the values they describe).
_EXPLANATORY = frozenset({"note", "method", "units", "goal", "score", "fitted_on", "operating_point", "warnings"})


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            if not path and key in _NOT_COMPARED or key in _EXPLANATORY:
                continue
            yield from _leaves(sub, f"{path}.{key}" if path else str(key))
    elif value is None or isinstance(value, (bool, str)):
        yield path, value


def model_change(before: PredictionRecord | Mapping[str, Any], after: PredictionRecord | Mapping[str, Any]) -> ModelChange:
    """The change of the model's output from ``before`` to ``after`` (see the module docstring)."""
    for name, rec in (("before", before), ("after", after)):
        if "prediction" not in rec or "probabilities" not in (rec.get("prediction") or {}):
            raise ValueError(f"The '{name}' parameter must be a prediction record (with prediction.probabilities).")
    pb, pa = before["prediction"], after["prediction"]
    probabilities = {
        c: {"before": float(pb["probabilities"][c]), "after": float(pa["probabilities"].get(c, float("nan"))),
            "change": float(pa["probabilities"].get(c, float("nan"))) - float(pb["probabilities"][c])}
        for c in pb["probabilities"]
    }  # fmt: skip

    def flag(rec: Mapping[str, Any]) -> bool | None:
        return ((rec.get("uncertainty") or {}).get("review") or {}).get("flag")

    old, new = dict(_leaves(before)), dict(_leaves(after))
    changed = [{"field": k, "before": old.get(k), "after": new.get(k)} for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    return cast(ModelChange, to_jsonable({
        "probabilities": probabilities,
        "decision": {"before": pb.get("decision"), "after": pa.get("decision"), "changed": pb.get("decision") != pa.get("decision")},
        "review_flag": {"before": flag(before), "after": flag(after), "changed": flag(before) != flag(after)},
        "changed_fields": changed,
    }))  # fmt: skip
