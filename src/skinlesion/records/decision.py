"""The record's ``prediction`` part: probabilities, diagnosis, class flags, referral and the decision.

:func:`decision_records` turns a :class:`~skinlesion.ensemble.bundle.BundlePrediction` into one
:class:`~skinlesion.records.schema.Prediction` per image, each output for its own reader:

- ``diagnosis``: the most likely class under the rule fitted for balanced accuracy (the argmax when
  the bundle has none);
- ``flags``: per thresholded class, "... cannot be excluded" when its probability reaches the
  threshold fitted for its clinical target, independent of the diagnosis;
- ``referral``: refer when the malignant probability passes the threshold fitted for malignant
  sensitivity;
- ``decision``: what the bundle's policy reports (the diagnosis; or, under the named policy
  ``priority-threshold``, the reference system's rule: the first thresholded class in priority order
  whose threshold fired, else the most probable class), with what decided it;

and the operating point (with or without metadata) whose temperature, thresholds and rules were used.
"""

from __future__ import annotations

from skinlesion.calibration.decision import PRIORITY_POLICY
from skinlesion.calibration.referral import malignant_probability
from skinlesion.classes import DISPLAY_NAMES
from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, Bundle, BundlePrediction
from skinlesion.ensemble.bundle_schema import ThresholdSpec
from skinlesion.records.schema import ClassFlag, Prediction, Referral


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


def _name(cls: str) -> str:
    return DISPLAY_NAMES.get(cls, cls).lower() if cls != "AKIEC" else "actinic keratosis / intraepithelial carcinoma"


def target_text(spec: ThresholdSpec) -> str:
    """A threshold's target and what it reached on held-out data, in words."""
    goal = " and ".join(
        f"{what} >= {v:g}" for what, v in (("sensitivity", spec.target_sensitivity), ("specificity", spec.target_specificity))
        if v is not None and v > 0
    ) or "no target"
    if spec.sensitivity is None or spec.specificity is None:
        return goal
    bounds = f"{round(100 * spec.confidence)}% lower bounds" if spec.confidence else "point estimates"
    reached = (
        f"held-out sensitivity {spec.sensitivity:.2f} (bound {spec.sensitivity_lower or 0:.2f}), "
        f"specificity {spec.specificity:.2f} (bound {spec.specificity_lower or 0:.2f})"
    )
    if spec.status == "met":
        return f"{goal} ({bounds}): met; {reached}"
    return f"{goal} ({bounds}): not met, {spec.reason or spec.status}; {reached}"


def class_flags(bundle: Bundle, probs: dict[str, float], operating_point: str) -> list[ClassFlag]:
    """One flag per class whose threshold the operating point has."""
    out = []
    for c, spec in bundle.threshold_specs(operating_point).items():
        if spec.threshold is None:
            continue
        flagged = probs[c] >= spec.threshold
        out.append(ClassFlag(
            class_name=c, flagged=bool(flagged),
            text=f"{_name(c)} cannot be excluded" if flagged else f"no {_name(c)} flag (probability below the threshold)",
            probability=probs[c], threshold=float(spec.threshold), target=target_text(spec), status=spec.status,
        ))
    return out


def referral(bundle: Bundle, probs: dict[str, float], operating_point: str) -> Referral | None:
    """Refer or not, from the operating point's referral threshold (None: no referral fitted)."""
    spec = bundle.referral_spec(operating_point)
    if spec is None:
        return None
    p = float(malignant_probability([[probs[c] for c in bundle.classes]], bundle.classes)[0])
    refer = p >= float(spec.threshold)  # type: ignore[arg-type]
    return Referral(
        refer=bool(refer),
        text="Refer: a malignancy cannot be excluded" if refer else "No referral indicated by the model",
        malignant_probability=p, threshold=float(spec.threshold),  # type: ignore[arg-type]
        malignant_classes=list(spec.malignant_classes or []),
        target=target_text(spec).replace("sensitivity", "malignant sensitivity", 1), status=spec.status,
    )


def diagnosis_rule_text(bundle: Bundle, operating_point: str) -> str:
    spec = bundle.diagnosis_spec(operating_point)
    if spec is None or not any(bundle.diagnosis_weights(operating_point)):
        why = "no class weights fitted" if spec is None else "fitted class weights were all 0: none beat argmax out of sample"
        return f"most probable class ({why})"
    return "most probable class after per-class weights fitted for balanced accuracy on held-out predictions"


def decision_records(bundle: Bundle, pred: BundlePrediction) -> list[Prediction]:
    """Per image: probabilities, argmax, diagnosis, flags, referral, the policy's decision and what
    decided it, and the operating point (with or without metadata) whose parameters were used."""
    points = {name: bundle.thresholds_for(name) for name in (WITH_METADATA, WITHOUT_METADATA)}
    conflict = bundle.spec.decision.conflict
    policy = bundle.policy
    out = []
    for i in range(len(pred.decision)):
        name = str(pred.operating_point[i])  # type: ignore[index]
        thresholds = points[name]
        probs = dict(zip(bundle.classes, pred.probs[i].astype(float).tolist(), strict=True))
        diagnosis = bundle.classes[int(pred.diagnosis[i])]  # type: ignore[index]
        rule_text = diagnosis_rule_text(bundle, name)
        fired = int(pred.fired[i]) if policy == PRIORITY_POLICY else -1
        if policy == PRIORITY_POLICY:
            decision = bundle.classes[int(pred.decision[i])]
            decided_by = (
                f"threshold of {bundle.classes[fired]} ({thresholds[bundle.classes[fired]]:.4f})" if fired >= 0
                else "most probable class (no threshold reached)"
            )
        else:
            decision, decided_by = diagnosis, f"diagnosis: {rule_text}"
        out.append(
            Prediction(
                probabilities=probs,
                argmax=bundle.classes[int(pred.argmax[i])],
                diagnosis=diagnosis,
                diagnosis_rule=rule_text,
                flags=class_flags(bundle, probs, name),
                referral=referral(bundle, probs, name),
                policy=policy,
                decision=decision,
                decided_by=decided_by,
                threshold_fired=bundle.classes[fired] if fired >= 0 else None,
                thresholds=thresholds,
                priority=bundle.priority if thresholds else None,
                conflict=conflict if thresholds else None,
                operating_point=operating_point_text(bundle, name, bool(pred.metadata_given[i])),  # type: ignore[index]
                operating_point_name=name,
            )
        )
    return out
