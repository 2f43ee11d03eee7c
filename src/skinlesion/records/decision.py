"""The record's ``prediction`` part: probabilities, the decision and what decided it.

:func:`decision_records` turns a :class:`~skinlesion.ensemble.bundle.BundlePrediction` into one
:class:`~skinlesion.records.schema.Prediction` per image: the calibrated probabilities, the argmax,
the decision of the bundle's rule (a class threshold that fired, else the most probable class),
and the operating point (with or without metadata) whose temperature and thresholds were used.
"""

from __future__ import annotations

from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, Bundle, BundlePrediction
from skinlesion.records.schema import Prediction


def operating_point_text(bundle: Bundle, name: str, metadata_given: bool) -> str:
    """Which temperature and thresholds decided an image, in words (the record's ``operating_point``)."""
    if name == WITHOUT_METADATA:
        return "without metadata (temperature and thresholds fitted on validation with metadata hidden)"
    if not bundle.fusion_members:
        return "the bundle's (temperature and thresholds fitted on validation; no member uses metadata)"
    if metadata_given:
        return "with metadata (temperature and thresholds fitted on validation with metadata)"
    fix = "recalibrate it with `skinlesion calibrate BUNDLE`" if bundle.path is not None else "a bare checkpoint is never calibrated"
    return (
        "with metadata (temperature and thresholds fitted on validation with metadata), although none was given: "
        f"this bundle has no operating point fitted without metadata ({fix})"
    )


def decision_records(bundle: Bundle, pred: BundlePrediction) -> list[Prediction]:
    """Per image: probabilities, argmax, decision and what decided it (threshold or argmax), and the
    operating point (with or without metadata) whose temperature and thresholds were used."""
    points = {name: bundle.thresholds_for(name) for name in (WITH_METADATA, WITHOUT_METADATA)}
    conflict = bundle.spec.decision.conflict
    out = []
    for i in range(len(pred.decision)):
        fired = int(pred.fired[i])
        name = str(pred.operating_point[i])  # type: ignore[index]
        thresholds = points[name]
        out.append(
            Prediction(
                probabilities=dict(zip(bundle.classes, pred.probs[i].astype(float).tolist(), strict=True)),
                argmax=bundle.classes[int(pred.argmax[i])],
                decision=bundle.classes[int(pred.decision[i])],
                decided_by=f"threshold of {bundle.classes[fired]} ({thresholds[bundle.classes[fired]]:.4f})"
                if fired >= 0
                else "most probable class (no threshold reached)",
                threshold_fired=bundle.classes[fired] if fired >= 0 else None,
                thresholds=thresholds,
                priority=bundle.priority if thresholds else None,
                conflict=conflict if thresholds else None,
                operating_point=operating_point_text(bundle, name, bool(pred.metadata_given[i])),  # type: ignore[index]
                operating_point_name=name,
            )
        )
    return out
