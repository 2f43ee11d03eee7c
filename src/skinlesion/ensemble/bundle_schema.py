"""The ``bundle.json`` format as typed, validated pydantic models: :class:`BundleMeta` and its parts.

``bundle.json`` is written from plain dicts by the code that fits it (``ensemble build``,
``calibrate``, ``explain review``) through :func:`~skinlesion.ensemble.bundle.write_meta`, which
validates it here first; what is written is the dict, byte for byte, so a bundle's id (the sha256 of
its ``bundle.json``) does not depend on this schema. Readers use the parsed model
(``bundle.spec.decision.thresholds["MEL"].threshold``) instead of string keys.

The format is open: every model keeps the fields it does not declare (``extra="allow"``: history
entries, rate dicts, notes added by other tools), so every bundle that loaded before still loads,
and a new section or decision field is one more optional field here. Numbers that a prediction
record copies (thresholds, temperatures, weights) keep their JSON type.

Errors name the field and what it must be, e.g. ``decision.without_metadata.thresholds.MEL.threshold
must be a probability or null, got 1.5``; :func:`parse_meta` raises them as :class:`BundleError`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator, ValidationError, field_validator, model_validator

from skinlesion.calibration.decision import CONFLICTS, POLICIES, resolve_priority
from skinlesion.errors import CheckpointError
from skinlesion.inference.tta import TTAPolicy

FORMAT = "skinlesion-bundle"
FORMAT_VERSION = 1
META = "bundle.json"
TEMPERATURE_MODES = ("none", "member", "ensemble")
REQUIRED = ("format", "format_version", "classes", "members", "tta", "temperature", "decision", "provenance")
REQUIRED_MEMBER = ("name", "dir", "backbone", "weight", "temperature", "weights_sha256")


class BundleError(CheckpointError):
    """A decision bundle is missing, incomplete or inconsistent."""


# -- value types ---------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v) and v > 0


def _number(v: Any) -> Any:
    if not _is_number(v):
        raise ValueError(f"must be a number, got {v!r}")
    return v


def _probability(v: Any) -> Any:
    if v is not None and not (_is_number(v) and 0 <= v <= 1):
        raise ValueError(f"must be a probability or null, got {v!r}")
    return v


def _short(v: Any, limit: int = 80) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _missing(data: Any, keys: tuple[str, ...], expected: str) -> list[str]:
    """The ``keys`` that ``data`` lacks; a ValueError saying it must be ``expected`` when it is no dict."""
    if not isinstance(data, dict):
        raise ValueError(f"must be {expected}, got {_short(data)}")
    return [k for k in keys if k not in data]


def _dict_of_thresholds(v: Any) -> Any:
    _missing(v, (), "a dict {class: {threshold, ...}}")
    return v


#: An int or float (not a bool), kept as written: records copy these values.
Number = Annotated[float, PlainValidator(_number)]
Probability = Annotated[float | None, PlainValidator(_probability)]


class _Open(BaseModel):
    """A part of bundle.json: declared fields typed, undeclared ones kept (``model_extra``); read-only."""

    model_config = ConfigDict(extra="allow", frozen=True)


# -- members, TTA, temperature -------------------------------------------------------------------
class FitMetrics(_Open):
    """Validation BACC, NLL and ECE of a member or of the ensemble (before/after calibration)."""

    bacc: float | None = None
    nll: float | None = None
    ece: float | None = None


class MemberValidation(FitMetrics):
    recorded_at_training: float | None = None
    fold: int | None = None  # cross-fitted members: the fold it was validated on, and its rows
    n: int | None = None


class MemberEntry(_Open):
    """One member: its folder (a checkpoint), backbone, ensemble weight and temperature."""

    name: str
    dir: str
    backbone: str
    weight: float
    temperature: float
    weights_sha256: str | None
    preprocessing: dict[str, Any] | None = None
    source_checkpoint: str | None = None
    validation: MemberValidation | None = None

    @model_validator(mode="before")
    @classmethod
    def _complete(cls, data: Any) -> Any:
        lacking = _missing(data, REQUIRED_MEMBER, f"a dict with {list(REQUIRED_MEMBER)}")
        if lacking:
            raise ValueError(f"lacks {lacking}")
        name, w, t = data["name"], data["weight"], data["temperature"]
        if not (_is_number(w) and w >= 0):
            raise ValueError(f"({name}): weight must be >= 0, got {w!r}")
        if not (_is_number(t) and t > 0):
            raise ValueError(f"({name}): temperature must be > 0, got {t!r}")
        return data


class Weighting(_Open):
    """How the member weights were fitted (``bacc``, ``uniform`` or ``nll``) and what they gave on validation."""

    method: str | None = None
    formula: str | None = None
    member_bacc: list[float] | None = None
    val_nll: float | None = None
    val_nll_uniform: float | None = None


class TTASpec(_Open):
    """The TTA views (D4 names, ``zoom:F``) and how they are averaged (``prob`` or ``logit``)."""

    views: list[str]
    average: str

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        try:
            _missing(data, (), "a dict {views, average}")
            policy = TTAPolicy.parse(data.get("views", ()), data.get("average", ""))
        except (ValueError, AttributeError, TypeError) as e:
            raise ValueError(f"is invalid: {e}") from None
        return {**data, "views": list(policy.views), "average": policy.average}

    @property
    def policy(self) -> TTAPolicy:
        return TTAPolicy(tuple(self.views), self.average)


class TemperatureSpec(_Open):
    """Temperature scaling (Guo et al. 2017): ``none``, per ``member`` or of the ``ensemble``.

    The bundle's main ``temperature`` keeps member temperatures in ``members[i].temperature``; an
    operating point's ``temperature`` (``decision.without_metadata``) lists them in ``members``."""

    mode: str
    ensemble: Number | None = None
    #: per-class biases added after the ensemble temperature (mode ``ensemble`` only; absent: none)
    bias: dict[str, float] | None = None
    members: dict[str, Number] | None = None
    fitted_on: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _is_dict(cls, data: Any) -> Any:
        _missing(data, (), "a dict with 'mode'")
        return data

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in TEMPERATURE_MODES:
            raise ValueError(f"must be one of {TEMPERATURE_MODES}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _values(self) -> TemperatureSpec:
        if self.mode == "ensemble" and not _positive(self.ensemble):
            raise ValueError(f".ensemble must be > 0 when mode is 'ensemble', got {self.ensemble!r}")
        if self.bias is not None and self.mode != "ensemble":
            raise ValueError(f".bias is only used with mode 'ensemble', got mode {self.mode!r}")
        for name, t in (self.members or {}).items():
            if not _positive(t):
                raise ValueError(f".members.{name} must be > 0, got {t!r}")
        return self


# -- decision ------------------------------------------------------------------------------------
class ThresholdSpec(_Open):
    """One class's threshold and how it was chosen: the ``ThresholdChoice`` dict of
    :mod:`skinlesion.calibration.thresholds` (targets, validation rates and bounds, fallback reason)."""

    threshold: Probability = None
    cls: str | None = None
    status: str | None = None
    rule: str | None = None
    target_sensitivity: Number | None = None
    target_specificity: Number | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    sensitivity_lower: float | None = None
    specificity_lower: float | None = None
    n_positive: int | None = None
    n_negative: int | None = None
    confidence: float | None = None
    bound: str | None = None
    reason: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _is_dict(cls, data: Any) -> Any:
        _missing(data, (), "a dict {threshold, ...}")
        return data


Thresholds = Annotated[dict[str, ThresholdSpec], BeforeValidator(_dict_of_thresholds)]


class ClassRates(_Open):
    sensitivity: float | None = None
    specificity: float | None = None


class DecisionRates(_Open):
    """Validation BACC, malignant BACC and per-class rates of a decision rule."""

    bacc: float | None = None
    malignant_bacc: float | None = None
    per_class: dict[str, ClassRates] | None = None


class DiagnosisSpec(_Open):
    """The diagnosis rule (:mod:`skinlesion.calibration.diagnosis`): ``argmax_k log p_k + log_weights_k``."""

    rule: str | None = None
    log_weights: dict[str, float] | None = None


class ReferralSpec(ThresholdSpec):
    """The malignancy referral (:mod:`skinlesion.calibration.referral`): a threshold on the summed
    probability of ``malignant_classes``, chosen like a class threshold."""

    score: str | None = None
    malignant_classes: list[str] | None = None


class OperatingPoint(_Open):
    """A second operating point (``decision.without_metadata``): the temperature and thresholds
    fitted on validation with the patient metadata hidden."""

    temperature: TemperatureSpec
    thresholds: Thresholds
    fitted_on: str | None = None
    validation: DecisionRates | None = None
    validation_with_metadata_point: DecisionRates | None = None
    diagnosis: DiagnosisSpec | None = None
    referral: ReferralSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _complete(cls, data: Any) -> Any:
        missing = _missing(data, ("temperature", "thresholds"), "a dict with 'temperature' and 'thresholds'")
        if missing:
            raise ValueError(f"lacks field(s) {missing}")
        return data


class OODSpec(_Open):
    """The out-of-distribution gate (:meth:`skinlesion.ood.gate.OODGate.to_dict`); arrays in a file beside."""

    score: str | None = None
    threshold: float | None = None
    quantile: float | None = None
    members: list[str] | None = None


class DecisionSpec(_Open):
    """How probabilities become a decision: per-class thresholds checked in clinical ``priority``
    order (``conflict`` ``priority`` or ``ratio``), else the most probable class; how the thresholds
    were chosen; the optional without-metadata operating point. New decision parts (a diagnosis
    rule, a referral, an OOD gate, a policy name) are optional fields: absent means not fitted."""

    rule: str | None = None
    description: str | None = None
    priority: list[str] | None = None
    conflict: str = "priority"
    thresholds: Thresholds = {}
    confidence: float | None = None
    bound: str | None = None
    prefer: str | None = None
    fallback: str | None = None
    fitted_on: str | None = None
    validation: DecisionRates | None = None
    without_metadata: OperatingPoint | None = None
    diagnosis: DiagnosisSpec | None = None
    referral: ReferralSpec | None = None
    ood: OODSpec | None = None
    policy: str | None = None

    @field_validator("conflict")
    @classmethod
    def _conflict(cls, v: str) -> str:
        if v not in CONFLICTS:
            raise ValueError(f"must be one of {CONFLICTS}, got {v!r}")
        return v

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        if v is not None and v not in POLICIES:
            raise ValueError(f"must be one of {POLICIES}, got {v!r}")
        return v

    @field_validator("without_metadata", mode="before")
    @classmethod
    def _point_given(cls, v: Any) -> Any:
        if v is None:  # written as null: not the same as absent
            raise ValueError("must be a dict with 'temperature' and 'thresholds', got None")
        return v


# -- review, provenance, history -----------------------------------------------------------------
class ReviewPoint(_Open):
    """A review threshold and how it was fitted (``fitted_for``: the members, weights and
    temperatures it is valid for; ``validation``: its effect there)."""

    threshold: Number | None = None
    fitted_on: str | None = None
    fitted_for: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None


class ReviewSpec(ReviewPoint):
    """The review flag (:mod:`skinlesion.uncertainty.review_fit`): an MC-dropout uncertainty
    ``score`` compared with a threshold chosen for ``goal`` ``target`` on validation;
    ``without_metadata`` holds the threshold fitted with the metadata hidden.

    Completeness and freshness are checked where the flag is used
    (:func:`~skinlesion.uncertainty.mc_predict.review_flag_from_bundle`), so a stale review never
    stops a bundle from loading."""

    method: str | None = None  # "mc_dropout" (None: bundles from before the field) or "ensemble"
    score: str | None = None
    goal: str | None = None
    target: Number | None = None
    flag_when: str | None = None
    n_samples: int | None = None
    include_backbone: bool | None = None
    seed: int | None = None
    fitted: str | None = None
    without_metadata: ReviewPoint | None = None

    def point(self, without_metadata: bool) -> ReviewSpec:
        """This review as seen by one operating point: with ``without_metadata``, its
        ``without_metadata`` fields replace the main ones (``fitted_for`` None when there are none)."""
        if not without_metadata:
            return self
        wm = self.without_metadata
        if wm is None:
            return self.model_copy(update={"fitted_for": None})
        return self.model_copy(update={**{k: getattr(wm, k) for k in wm.model_fields_set}, **(wm.model_extra or {})})


class Provenance(_Open):
    """Where the bundle came from: the split (hash, manifest copy), the data, package versions."""

    split_hash: str | None = None
    manifest: str | None = None
    dataset: str | None = None
    data_config: dict[str, Any] | None = None
    group_key: str | None = None
    n_val: int | None = None
    n_val_groups: int | None = None
    versions: dict[str, Any] | None = None
    checkpoint: str | None = None  # a bare checkpoint used as a one-member bundle


class HistoryEntry(_Open):
    """One step of the bundle's history (``build``, ``calibrate``, ``review``, ...) and what it used."""

    at: str | None = None
    action: str | None = None


class BundleValidation(_Open):
    """The ensemble on validation: uncalibrated, calibrated, and the identity view only."""

    uncalibrated: FitMetrics | None = None
    calibrated: FitMetrics | None = None
    identity_view_only: FitMetrics | None = None


class CrossFitting(_Open):
    """A cross-fitted bundle: member ``name`` was trained without fold ``member_folds[name]`` of a
    ``k``-fold manifest, and validation rows are predicted out-of-fold (``validation`` says how)."""

    k: int
    member_folds: dict[str, int]
    validation: str | None = None


# -- the whole file ------------------------------------------------------------------------------
class BundleMeta(_Open):
    """``bundle.json``."""

    format: str
    format_version: int
    name: str | None = None
    created: str | None = None
    classes: list[str]
    members: list[MemberEntry]
    weighting: Weighting | None = None
    tta: TTASpec
    temperature: TemperatureSpec
    decision: DecisionSpec
    provenance: Provenance
    history: list[HistoryEntry] = []
    validation: BundleValidation | None = None
    review: ReviewSpec | None = None
    cross_fitting: CrossFitting | None = None

    @model_validator(mode="before")
    @classmethod
    def _readable(cls, data: Any) -> Any:
        """Required sections and a format this package reads, before anything else is parsed."""
        missing = _missing(data, REQUIRED, f"a JSON object with {list(REQUIRED)}")
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        if data["format"] != FORMAT:
            raise ValueError(f"field 'format' must be {FORMAT!r}, got {data['format']!r}")
        try:
            version = int(data["format_version"])
        except (TypeError, ValueError):
            raise ValueError(f"field 'format_version' must be an integer, got {data['format_version']!r}") from None
        if version > FORMAT_VERSION:
            raise ValueError(f"format_version {data['format_version']} is newer than this package supports ({FORMAT_VERSION})")
        if data.get("review") == {}:
            data = {**data, "review": None}  # an empty review record: no review flag
        return data

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list of distinct names, got {v!r}")
        return v

    @field_validator("members")
    @classmethod
    def _members(cls, v: list[MemberEntry]) -> list[MemberEntry]:
        if not v:
            raise ValueError("is empty: a bundle needs at least one member")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        total = sum(float(m.weight) for m in self.members)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"member weights must sum to 1, they sum to {total:.6f}")
        _known_classes(self.decision.thresholds, self.classes, "decision.thresholds")
        _bias_classes(self.temperature, self.classes, "temperature")
        if self.decision.without_metadata is not None:
            self._check_point(self.decision.without_metadata, "decision.without_metadata")
        try:
            resolve_priority(self.classes, self.decision.priority)
        except ValueError as e:
            raise ValueError(f"decision.priority: {e}") from None
        return self

    def _check_point(self, point: OperatingPoint, where: str) -> None:
        """An operating point's temperature has the bundle's mode (and, per member, only its members)."""
        t, mode = point.temperature, self.temperature.mode
        if t.mode != mode:
            raise ValueError(f"{where}.temperature.mode must be the bundle's temperature.mode {mode!r}, got {t.mode!r}")
        if mode == "member":
            names = [m.name for m in self.members]
            if t.members is None:
                raise ValueError(f"{where}.temperature.members must be a dict {{member: temperature}} when mode is 'member', got None")
            unknown = [n for n in t.members if n not in names]
            if unknown:
                raise ValueError(f"{where}.temperature.members names unknown member(s) {unknown}; members are {names}")
        _known_classes(point.thresholds, self.classes, f"{where}.thresholds")
        _bias_classes(t, self.classes, f"{where}.temperature")


def _bias_classes(t: TemperatureSpec, classes: list[str], where: str) -> None:
    if t.bias is not None and set(t.bias) != set(classes):
        raise ValueError(f"{where}.bias must give one bias for exactly the classes {list(classes)}, got {sorted(t.bias)}")


def _known_classes(thresholds: dict[str, ThresholdSpec], classes: list[str], where: str) -> None:
    unknown = [c for c in thresholds if c not in classes]
    if unknown:
        raise ValueError(f"{where} name unknown class(es) {unknown}; classes are {list(classes)}")


# -- errors --------------------------------------------------------------------------------------
def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _describe(err: Any) -> str:
    """One pydantic error as ``<field> <what it must be>, got <value>``: the validators above say
    what a field must be relative to it; a message starting with "." continues the field's path."""
    loc = tuple(err["loc"])
    if err["type"] == "value_error":
        msg = str(err["ctx"]["error"])
    elif err["type"] == "missing":
        msg = "is required"
    else:
        msg = re.sub(r" or instance of \w+", "", err["msg"].replace("Input should be", "must be", 1))
        msg = f"{msg}, got {_short(err['input'])}"
    if not loc:
        return msg
    if msg.startswith("."):
        return _where(loc) + msg
    return f"field '{loc[0]}' {msg}" if len(loc) == 1 else f"{_where(loc)} {msg}"


def bundle_error(path: Path | None, msg: str) -> BundleError:
    """A :class:`BundleError` that says which ``bundle.json`` (``path``: the bundle folder) is wrong."""
    where = f"{path / META}" if path is not None else "bundle"
    return BundleError(f"{where}: {msg}")


def parse_meta(meta: Any, path: Path | None = None) -> BundleMeta:
    """``meta`` (bundle.json as a dict) as a :class:`BundleMeta`; a :class:`BundleError` names every
    missing or inconsistent field (``path``: the bundle folder, for the message)."""
    try:
        return BundleMeta.model_validate(meta)
    except ValidationError as e:
        raise bundle_error(path, "; ".join(_describe(err) for err in e.errors(include_url=False))) from None
