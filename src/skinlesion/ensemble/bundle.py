"""The decision bundle: one folder with everything a prediction needs and can be audited against.

Layout::

    BUNDLE/
      bundle.json            members, weights, TTA policy, temperatures, thresholds, priority,
                             class names, provenance (split hash, validation metrics, versions)
      members/<name>/        one checkpoint per member (weights.safetensors + checkpoint.json)
      split_manifest.csv     the lesion-disjoint split every member was trained on (+ .json)
      validation.npz         cached validation view logits (lets ``calibrate`` refit without a rerun)
      validation_no_metadata.npz
                             the same with the patient metadata hidden (bundles with metadata fusion
                             members; cached by ``calibrate`` for the without-metadata operating point)

``load_bundle`` validates the folder and names whatever is missing or inconsistent. A single
checkpoint is used as a one-member bundle through :func:`bundle_from_checkpoint`.

**Format.** ``bundle.json`` is typed by :mod:`skinlesion.ensemble.bundle_schema`: a loaded
:class:`Bundle` has it as ``bundle.spec`` (:class:`~skinlesion.ensemble.bundle_schema.BundleMeta`,
read-only, what readers use) and as ``bundle.meta`` (the dict as read, what writers change and
write back with :func:`write_meta`, which validates it first and writes it unchanged).

**Operating points.** Metadata fusion members shift their probabilities when the patient's age,
sex and site are missing, so a temperature and thresholds fitted on validation *with* metadata are
miscalibrated for an image given without any. ``calibrate`` therefore fits, for bundles with
fusion members, a second operating point on validation with the metadata hidden
(``decision.without_metadata``: temperature, thresholds and their validation rates). Every
prediction uses, per image, the point that matches what its fusion members received
(:meth:`Bundle.predict_from_logits` ``metadata_given``); a bundle without that key uses its one
point for every image.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_softmax

from skinlesion._hashing import sha256_file
from skinlesion._json import json_default
from skinlesion.calibration.decision import DEFAULT_POLICY, PRIORITY_POLICY, decide, resolve_priority
from skinlesion.calibration.temperature import apply_temperature
from skinlesion.data.table import LesionTable
from skinlesion.ensemble.bundle_schema import (
    FORMAT,
    FORMAT_VERSION,
    META,
    REQUIRED,
    REQUIRED_MEMBER,
    TEMPERATURE_MODES,
    BundleError,
    BundleMeta,
    DiagnosisSpec,
    OperatingPoint,
    ReferralSpec,
    ThresholdSpec,
    bundle_error,
    parse_meta,
)
from skinlesion.ensemble.members import Member
from skinlesion.ensemble.predict import images_view_logits, member_view_logits
from skinlesion.ensemble.weighting import combine_log_probs
from skinlesion.errors import CheckpointError
from skinlesion.inference.tta import TTAPolicy
from skinlesion.models.checkpoint import META as CHECKPOINT_META
from skinlesion.models.checkpoint import WEIGHTS, load_checkpoint, resolve_checkpoint_dir

MANIFEST = "split_manifest.csv"
VALIDATION_CACHE = "validation.npz"
VALIDATION_NO_METADATA_CACHE = "validation_no_metadata.npz"
#: Names of the operating points (temperature + thresholds) a prediction row can be decided by.
WITH_METADATA = "with_metadata"
WITHOUT_METADATA = "without_metadata"
OPERATING_POINTS = (WITH_METADATA, WITHOUT_METADATA)
_POINT_DTYPE = f"U{max(len(p) for p in OPERATING_POINTS)}"
_SHA256 = re.compile(r"[0-9a-f]{64}")
__all__ = [  # FORMAT ... BundleError live in bundle_schema; existing code imports them from here
    "DEFAULT_BUNDLE", "FORMAT", "FORMAT_VERSION", "MANIFEST", "META", "OPERATING_POINTS", "REQUIRED", "REQUIRED_MEMBER",
    "TEMPERATURE_MODES", "VALIDATION_CACHE", "VALIDATION_NO_METADATA_CACHE", "WITHOUT_METADATA", "WITH_METADATA", "Bundle",
    "BundleError", "BundleMeta", "BundlePrediction", "bundle_from_checkpoint", "default_bundle_dir", "is_bundle",
    "load_bundle", "load_model_source", "resolve_bundle_path", "validate_meta", "write_meta",
]


@dataclass
class BundlePrediction:
    """Outputs for N images: calibrated probabilities, argmax, the priority-threshold rule's decisions
    (``decision``, ``fired``), the diagnosis, member outputs (:attr:`Bundle.policy` says which of the
    two rules is *the* decision)."""

    probs: np.ndarray  # (N, K) calibrated ensemble probabilities
    argmax: np.ndarray  # (N,)
    decision: np.ndarray  # (N,) decision rule (thresholds + priority); equals argmax without thresholds
    fired: np.ndarray  # (N,) index of the class whose threshold fired, -1 when argmax decided
    member_view_logits: list[np.ndarray] = field(default_factory=list)  # M x (N, V, K)
    #: (N,) per row the operating point whose temperature and thresholds decided it
    #: (:data:`WITH_METADATA` or :data:`WITHOUT_METADATA`); None at construction: all WITH_METADATA.
    operating_point: np.ndarray | None = None
    #: (N,) per row whether the fusion members received any metadata; None at construction: all True.
    metadata_given: np.ndarray | None = None
    #: (N,) the diagnosis: argmax of log p + the fitted class log-weights (``decision.diagnosis``);
    #: None at construction: the argmax.
    diagnosis: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.decision)
        if self.diagnosis is None:
            self.diagnosis = np.asarray(self.argmax).copy()
        if self.operating_point is None:
            self.operating_point = np.full(n, WITH_METADATA, dtype=_POINT_DTYPE)
        if self.metadata_given is None:
            self.metadata_given = np.ones(n, dtype=bool)


@dataclass
class Bundle:
    """A loaded decision bundle (members in eval mode).

    ``meta`` is bundle.json as a dict; ``spec`` its typed view, parsed (and validated: a
    :class:`BundleError` names what is wrong) when the Bundle is made. Code that changes ``meta``
    of a live bundle makes a new ``Bundle(path, meta, members)`` before predicting with it.
    """

    path: Path | None
    meta: dict[str, Any]
    members: list[Member]
    spec: BundleMeta = field(init=False, repr=False)
    #: Objects loaded once per live bundle by the code that uses them (e.g. the OOD gate's arrays).
    cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.spec = parse_meta(self.meta, self.path)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.spec.classes)

    @property
    def tta(self) -> TTAPolicy:
        return self.spec.tta.policy

    @property
    def temperature_mode(self) -> str:
        return self.spec.temperature.mode

    @property
    def ensemble_temperature(self) -> float:
        t = self.spec.temperature.ensemble
        return 1.0 if t is None else float(t)

    @property
    def thresholds(self) -> dict[str, float | None]:
        """Thresholds of the main (with-metadata) operating point."""
        return {c: v.threshold for c, v in self.spec.decision.thresholds.items()}

    @property
    def without_metadata(self) -> OperatingPoint | None:
        """The operating point fitted on validation with the metadata hidden (``decision.without_metadata``), or None."""
        return self.spec.decision.without_metadata

    @property
    def fusion_members(self) -> list[Member]:
        """Members that take patient metadata (metadata fusion models)."""
        from skinlesion.models.fusion import MetadataFusionNet

        return [m for m in self.members if isinstance(m.model, MetadataFusionNet)]

    @property
    def member_folds(self) -> dict[str, int] | None:
        """Member name -> the fold it did not train on, for a cross-fitted bundle (``cross_fitting``); else None."""
        cv = self.spec.cross_fitting
        return None if cv is None else dict(cv.member_folds)

    def only(self, name: str) -> Bundle:
        """This bundle reduced to its member ``name`` (weight 1), with the same temperatures and
        decision parameters: e.g. the one member of a cross-fitted bundle that did not train on an image."""
        keep = [m for m in self.members if m.name == name]
        if not keep:
            raise ValueError(f"The 'name' parameter must name a member of the bundle {[m.name for m in self.members]}. Got {name!r}.")
        meta = {**self.meta, "members": [{**m, "weight": 1.0} for m in self.meta["members"] if m.get("name") == name]}
        return Bundle(self.path, meta, [dataclasses.replace(keep[0], weight=1.0)])

    def _point(self, operating_point: str) -> OperatingPoint | None:
        """The ``without_metadata`` entry when that point is asked for and the bundle has it; else None (main point)."""
        if operating_point not in OPERATING_POINTS:
            raise ValueError(f"The 'operating_point' parameter must be one of {OPERATING_POINTS}. Got {operating_point!r} instead.")
        return self.without_metadata if operating_point == WITHOUT_METADATA else None

    def resolve_operating_point(self, operating_point: str) -> str:
        """The point that actually decides when ``operating_point`` is asked for: WITHOUT_METADATA only
        when the bundle has it, otherwise WITH_METADATA (the bundle's only point)."""
        return WITHOUT_METADATA if self._point(operating_point) is not None else WITH_METADATA

    def thresholds_for(self, operating_point: str = WITH_METADATA) -> dict[str, float | None]:
        """Thresholds of ``operating_point`` (the main ones when the bundle has no such point)."""
        point = self._point(operating_point)
        if point is None:
            return self.thresholds
        return {c: v.threshold for c, v in point.thresholds.items()}

    def threshold_specs(self, operating_point: str = WITH_METADATA) -> dict[str, ThresholdSpec]:
        """``{class: ThresholdSpec}`` of ``operating_point``: the threshold, its targets, validation
        rates and how it was chosen (``ThresholdChoice`` of :mod:`skinlesion.calibration.thresholds`)."""
        point = self._point(operating_point)
        return dict((point if point is not None else self.spec.decision).thresholds)

    def temperatures_for(self, operating_point: str = WITH_METADATA) -> dict[str, Any]:
        """``{"mode", "ensemble", "members": {name: T}, "bias": {class: b} or None}`` of ``operating_point`` (the
        main ones when absent; ``bias``: per-class biases after the ensemble temperature, mode ``ensemble``)."""
        point = self._point(operating_point)
        t = point.temperature if point is not None else None
        given = (t.members if t is not None else None) or {}
        members = {m.name: float(given.get(m.name, m.temperature)) for m in self.members}
        ensemble = float(t.ensemble) if t is not None and t.ensemble is not None else self.ensemble_temperature
        bias = (t if t is not None else self.spec.temperature).bias
        return {
            "mode": self.temperature_mode, "ensemble": ensemble, "members": members,
            "bias": None if bias is None else {c: float(bias[c]) for c in self.classes},
        }

    def class_bias(self, operating_point: str = WITH_METADATA) -> np.ndarray | None:
        """``(K,)`` per-class biases added after the ensemble temperature at ``operating_point``, in class
        order; None unless the temperature mode is ``ensemble`` with biases (what every path that
        scores logits with the bundle's temperatures adds: predictions, MC dropout, members x views)."""
        bias = self.temperatures_for(operating_point)["bias"]
        if self.temperature_mode != "ensemble" or not bias:
            return None
        return np.asarray([bias[c] for c in self.classes], dtype=np.float64)

    @property
    def priority(self) -> list[str]:
        return resolve_priority(self.classes, self.spec.decision.priority)

    @property
    def policy(self) -> str:
        """Which output is *the* decision: ``diagnosis`` (default) or ``priority-threshold`` (the
        reference system's rule, kept as a named policy); see :data:`~skinlesion.calibration.decision.POLICIES`."""
        return self.spec.decision.policy or DEFAULT_POLICY

    def _part(self, operating_point: str, name: str) -> Any:
        """``diagnosis`` or ``referral`` of ``operating_point`` (the main point's when it has none)."""
        point = self._point(operating_point)
        part = getattr(point, name, None) if point is not None else None
        return part if part is not None else getattr(self.spec.decision, name)

    def diagnosis_spec(self, operating_point: str = WITH_METADATA) -> DiagnosisSpec | None:
        """The fitted diagnosis rule of ``operating_point`` (None: not fitted, the diagnosis is the argmax)."""
        spec = self._part(operating_point, "diagnosis")
        return spec if spec is not None and spec.log_weights else None

    def diagnosis_weights(self, operating_point: str = WITH_METADATA) -> np.ndarray:
        """Per-class log-weights ``(K,)`` of the diagnosis rule (zeros when not fitted: argmax)."""
        spec = self.diagnosis_spec(operating_point)
        if spec is None:
            return np.zeros(len(self.classes))
        return np.asarray([float(spec.log_weights[c]) for c in self.classes])  # type: ignore[index]

    def diagnose(self, probs: np.ndarray, *, operating_point: str = WITH_METADATA) -> np.ndarray:
        """Diagnoses ``(N,)``: ``argmax_k log p_k + log_weights_k`` (:mod:`skinlesion.calibration.diagnosis`)."""
        p = np.asarray(probs, dtype=np.float64)
        return (np.log(np.clip(p, 1e-12, None)) + self.diagnosis_weights(operating_point)).argmax(axis=1)

    def policy_decisions(self, probs: np.ndarray, *, operating_point: str = WITH_METADATA) -> np.ndarray:
        """The decision ``(N,)`` the bundle's :attr:`policy` gives calibrated probabilities ``(N, K)``:
        the diagnosis, or the priority-threshold rule's decision."""
        if self.policy == PRIORITY_POLICY:
            return np.asarray(self.decide(probs, operating_point=operating_point)[0], dtype=np.int64)
        return self.diagnose(probs, operating_point=operating_point)

    def policy_decision_of(self, pred: BundlePrediction) -> np.ndarray:
        """The class index ``(N,)`` each row of ``pred`` is decided under the bundle's policy."""
        return np.asarray(pred.decision if self.policy == PRIORITY_POLICY else pred.diagnosis, dtype=np.int64)

    def referral_spec(self, operating_point: str = WITH_METADATA) -> ReferralSpec | None:
        """The malignancy referral of ``operating_point`` (None: not fitted)."""
        spec = self._part(operating_point, "referral")
        return spec if spec is not None and spec.threshold is not None else None

    @property
    def weights(self) -> np.ndarray:
        return np.array([m.weight for m in self.members], dtype=np.float64)

    @property
    def bundle_id(self) -> str:
        """sha256 of bundle.json (which records every member's weight hash): names the exact model."""
        if self.path is not None and (self.path / META).is_file():
            return sha256_file(self.path / META)
        return "unsaved:" + "-".join(m.meta.get("weights_sha256", "?")[:12] for m in self.members)

    # -- combining -----------------------------------------------------------------------------
    def log_probs(
        self,
        view_logits: Sequence[np.ndarray],
        *,
        calibrated: bool = True,
        views: Sequence[int] | None = None,
        operating_point: str = WITH_METADATA,
    ) -> np.ndarray:
        """Ensemble log-probabilities ``(N, K)`` from M member view logits ``(N, V, K)``.

        ``calibrated=False`` ignores every temperature; ``views`` selects a subset of the TTA views
        (e.g. ``[0]`` for the identity view only); ``operating_point`` picks whose temperatures are
        applied (:data:`WITHOUT_METADATA`: the ones fitted with the metadata hidden, when the bundle
        has them).
        """
        if len(view_logits) != len(self.members):
            raise ValueError(f"Got view logits of {len(view_logits)} members; the bundle has {len(self.members)}")
        temps = self.temperatures_for(operating_point)
        mode = self.temperature_mode if calibrated else "none"
        average = self.spec.tta.average
        member_lp = []
        for m, z in zip(self.members, view_logits, strict=True):
            z = np.asarray(z)
            if views is not None:
                z = z[:, list(views)]
            member_lp.append(apply_temperature(z, temps["members"][m.name] if mode == "member" else 1.0, average))
        lp = combine_log_probs(member_lp, self.weights)
        if mode == "ensemble":
            bias = self.class_bias(operating_point)
            lp = log_softmax(lp / temps["ensemble"] + (0.0 if bias is None else bias), axis=-1)
        return lp

    def decide(self, probs: np.ndarray, *, operating_point: str = WITH_METADATA) -> tuple[np.ndarray, np.ndarray]:
        """Decisions and the class whose threshold fired (-1: argmax) under the bundle's rule, with
        the thresholds of ``operating_point``."""
        conflict = self.spec.decision.conflict
        return decide(  # type: ignore[return-value]
            probs, self.classes, self.thresholds_for(operating_point), self.priority, conflict=conflict, return_reason=True
        )

    def predict_from_logits(
        self, view_logits: list[np.ndarray], metadata_given: np.ndarray | bool | None = None
    ) -> BundlePrediction:
        """Calibrated probabilities and decisions from member view logits ``M x (N, V, K)``.

        ``metadata_given``: per row (N,) whether the fusion members received any metadata (a single
        bool applies to every row; None: all given, the table/validation setting). Rows without
        metadata are decided by the without-metadata operating point when the bundle has one
        (``decision.without_metadata``), otherwise by the main point; ``operating_point`` says which.
        """
        if len(view_logits) != len(self.members):
            raise ValueError(f"Got view logits of {len(view_logits)} members; the bundle has {len(self.members)}")
        n = int(np.asarray(view_logits[0]).shape[0])
        if metadata_given is None:
            given = np.ones(n, dtype=bool)
        else:
            raw = np.asarray(metadata_given)
            if raw.dtype != bool or raw.ndim > 1 or (raw.ndim == 1 and raw.shape[0] != n):
                raise ValueError(
                    f"The 'metadata_given' parameter must be a bool or a bool array of shape ({n},). "
                    f"Got dtype {raw.dtype} and shape {raw.shape} instead."
                )
            given = np.broadcast_to(raw, (n,)).copy()
        point = self.operating_points(given)
        probs = np.empty((n, len(self.classes)), dtype=np.float64)
        decision = np.empty(n, dtype=np.int64)
        fired = np.empty(n, dtype=np.int64)
        diagnosis = np.empty(n, dtype=np.int64)
        for op in OPERATING_POINTS:
            rows = point == op
            if not rows.any():
                continue
            z = view_logits if rows.all() else [np.asarray(v)[rows] for v in view_logits]
            p = np.exp(self.log_probs(z, operating_point=op))
            probs[rows] = p
            decision[rows], fired[rows] = self.decide(p, operating_point=op)
            diagnosis[rows] = self.diagnose(p, operating_point=op)
        return BundlePrediction(probs, probs.argmax(axis=1), decision, fired, view_logits, point, given, diagnosis)

    def operating_points(self, metadata_given: np.ndarray) -> np.ndarray:
        """Per row ``(N,)`` the operating point that decides it: :data:`WITHOUT_METADATA` for rows whose
        fusion members received no metadata when the bundle has that point, else :data:`WITH_METADATA`."""
        given = np.asarray(metadata_given, dtype=bool)
        without = ~given if self.without_metadata is not None else np.zeros(given.shape, dtype=bool)
        return np.where(without, WITHOUT_METADATA, WITH_METADATA).astype(_POINT_DTYPE)

    def metadata_given(self, metadata: Sequence[Mapping[str, Any] | None] | None, n: int) -> np.ndarray:
        """Per image ``(n,)``: whether at least one fusion member receives a metadata value.

        A record counts as given when its encoding differs from the all-missing one for some fusion
        member: a present age, sex or site. Values that encode as missing (None, ``""``,
        ``"unknown"``, a site never seen in training) do not count: the members then see exactly
        what they see without metadata. All False for a bundle without fusion members.
        """
        given = np.zeros(n, dtype=bool)
        if metadata is None:
            return given
        if len(metadata) != n:
            raise ValueError(f"The 'metadata' parameter must hold one record per image ({n}). Got {len(metadata)} instead.")
        records = [dict(r) if r is not None else {} for r in metadata]
        for m in self.fusion_members:
            encoder = m.model.metadata_encoder
            given |= (encoder.encode(records) != encoder.missing_vector()[None, :]).any(axis=1)
        return given

    # -- running -------------------------------------------------------------------------------
    def view_logits_table(
        self, table: LesionTable, *, batch_size: int = 32, num_workers: int = 0, device: str | None = None
    ) -> list[np.ndarray]:
        views = self.tta.views
        return [
            member_view_logits(m, table, views, batch_size=batch_size, num_workers=num_workers, device=device)
            for m in self.members
        ]

    def predict_table(self, table: LesionTable, **kw: Any) -> BundlePrediction:
        return self.predict_from_logits(self.view_logits_table(table, **kw))

    def predict_images(
        self, images: Sequence[np.ndarray], *, device: str | None = None, metadata: Sequence[dict[str, Any]] | None = None
    ) -> BundlePrediction:
        """``metadata``: one record per image (age, sex, site; see ``images_view_logits``), for fusion members.

        Images whose fusion members receive no metadata value are decided by the without-metadata
        operating point when the bundle has one (see :meth:`metadata_given`)."""
        views = self.tta.views
        return self.predict_from_logits(
            [images_view_logits(m, images, views, device=device, metadata=metadata) for m in self.members],
            metadata_given=self.metadata_given(metadata, len(images)),
        )


# -- validation and loading ----------------------------------------------------------------------
def validate_meta(meta: dict[str, Any], path: Path | None = None) -> BundleMeta:
    """Check a bundle.json dict against :class:`~skinlesion.ensemble.bundle_schema.BundleMeta`
    and return it parsed; a :class:`BundleError` names every missing or inconsistent field."""
    return parse_meta(meta, path)


def load_bundle(path: str | Path, *, map_location: str = "cpu", verify: bool = True) -> Bundle:
    """Load and validate a bundle folder (or its bundle.json)."""
    p = Path(path)
    if p.is_file() and p.name == META:
        p = p.parent
    if not p.exists():
        raise BundleError(f"Bundle {str(path)!r} does not exist")
    if not (p / META).is_file():
        raise BundleError(f"{p} is not a skinlesion bundle: {META} is missing (build one with `skinlesion ensemble build`)")
    try:
        meta = json.loads((p / META).read_text())
    except json.JSONDecodeError as e:
        raise bundle_error(p, f"not valid JSON ({e})") from e
    spec = validate_meta(meta, p)
    members = []
    root = p.resolve()
    for i, m in enumerate(spec.members):
        where = f"members[{i}] ({m.name})"
        if not isinstance(m.weights_sha256, str) or not _SHA256.fullmatch(m.weights_sha256):
            raise bundle_error(
                p, f"{where}: weights_sha256 is {m.weights_sha256!r}; every member's weights must be pinned by their "
                "sha256 (64 hex digits), as `skinlesion ensemble build` writes it",
            )
        d = p / m.dir
        if not d.is_dir():
            raise bundle_error(p, f"{where}: folder {d} is missing")
        try:
            files = [resolve_checkpoint_dir(d)]
        except CheckpointError as e:
            raise bundle_error(p, f"{where}: {e}") from None
        files += [files[0] / CHECKPOINT_META, files[0] / WEIGHTS]
        outside = [str(f) for f in files if not f.resolve().is_relative_to(root)]
        if outside:
            raise bundle_error(
                p, f"{where}: dir {m.dir!r} leads outside the bundle folder ({outside[0]}); a member's files must sit "
                "inside the bundle (members/<name>/, no links out of it)",
            )
        try:
            ckpt = load_checkpoint(d, map_location=map_location, verify=verify)
        except CheckpointError as e:
            raise bundle_error(p, f"members[{i}] ({m.name}): {e}") from None
        if ckpt.meta.get("weights_sha256") != m.weights_sha256:
            raise bundle_error(p, f"members[{i}] ({m.name}): weights_sha256 differs from the member's checkpoint.json")
        if list(ckpt.classes) != spec.classes:
            raise bundle_error(p, f"members[{i}] ({m.name}): classes {list(ckpt.classes)} differ from the bundle's {spec.classes}")
        member = _member(ckpt, m.name, float(m.weight), float(m.temperature))
        try:
            member.preprocessing = bundle_preprocessing(ckpt.preprocessing, m.preprocessing)
        except ValueError as e:
            raise bundle_error(p, f"{where}: {e}") from None
        members.append(member)
    return Bundle(p, meta, members)


def at_input_size(trained: Mapping[str, Any], input_size: Sequence[int] | None) -> dict[str, Any]:
    """A checkpoint's ``preprocessing`` fed at ``input_size`` (H, W) instead of its training size, which
    stays recorded as ``trained_input_size`` (test-time resolution; None: unchanged)."""
    pre = dict(trained)
    if input_size is None or [int(v) for v in input_size] == [int(v) for v in pre["input_size"]]:
        return pre
    h, w = (int(v) for v in input_size)
    if h < 8 or w < 8:
        raise ValueError(f"The 'input_size' parameter must be (H, W) with both >= 8. Got {list(input_size)} instead.")
    return {**pre, "input_size": [h, w], "trained_input_size": list(pre["input_size"])}


def bundle_preprocessing(trained: Mapping[str, Any], entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the bundle feeds a member: its checkpoint's ``preprocessing``, at the input size that
    ``bundle.json`` records for it (a test-time resolution fitted with the bundle, see
    :func:`at_input_size`). Any other difference from the checkpoint is a ValueError."""
    if entry is None:
        return dict(trained)
    size = entry.get("input_size")
    ok = isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v >= 8 for v in size)
    if not ok:
        raise ValueError(f"preprocessing.input_size must be [H, W] (integers >= 8), got {size!r}")
    pre = at_input_size(trained, size)
    for key in sorted(set(entry) | set(trained)):
        if key not in ("input_size", "trained_input_size") and entry.get(key) != trained.get(key):
            raise ValueError(
                f"preprocessing.{key} is {entry.get(key)!r} in bundle.json but {trained.get(key)!r} in the "
                "member's checkpoint; only the input size may differ (a test-time resolution)"
            )
    return pre


def _member(ckpt: Any, name: str, weight: float = 1.0, temperature: float = 1.0) -> Member:
    return Member(
        name=name,
        model=ckpt.model,
        preprocessing=ckpt.preprocessing,
        backbone=ckpt.meta["backbone"],
        weight=weight,
        temperature=temperature,
        meta=ckpt.meta,
    )


def bundle_from_checkpoint(path: str | Path, *, tta: str = "none", map_location: str = "cpu") -> Bundle:
    """A one-member, uncalibrated bundle (argmax decisions) around a checkpoint."""
    ckpt = load_checkpoint(path, map_location=map_location)
    policy = TTAPolicy.parse(tta)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": f"checkpoint:{ckpt.path}",
        "classes": list(ckpt.classes),
        "members": [
            {
                "name": ckpt.meta["backbone"],
                "dir": str(ckpt.path),
                "backbone": ckpt.meta["backbone"],
                "weight": 1.0,
                "temperature": 1.0,
                "weights_sha256": ckpt.meta.get("weights_sha256"),
            }
        ],
        "tta": policy.to_dict(),
        "temperature": {"mode": "none"},
        "decision": {"rule": "argmax", "thresholds": {}, "priority": None},
        "provenance": {"split_hash": ckpt.meta["data"].get("split_hash"), "checkpoint": str(ckpt.path)},
    }
    return Bundle(None, meta, [_member(ckpt, ckpt.meta["backbone"])])


#: The ``--bundle`` value that names the bundle shipped inside the package.
DEFAULT_BUNDLE = "default"


def default_bundle_dir() -> Path:
    """Where the packaged default bundle lives: ``skinlesion/default_bundle`` (``skinlesion recipe package``)."""
    import skinlesion

    return Path(skinlesion.__file__).resolve().parent / "default_bundle"


def resolve_bundle_path(value: str | Path) -> Path:
    """``value`` as a bundle folder; the word ``default`` names the packaged default bundle.

    (A local folder called ``default`` is reached as the text ``./default``.) Raises
    :class:`BundleError` when ``default`` is asked for and this installation has none.
    """
    if str(value).strip() == DEFAULT_BUNDLE:
        folder = default_bundle_dir()
        if not (folder / META).is_file():
            raise BundleError(
                f"this installation has no default bundle ({folder / META} is missing): train one with "
                "`skinlesion recipe run` and `skinlesion recipe package`, or pass --bundle BUNDLE or --checkpoint CHECKPOINT"
            )
        return folder
    return Path(value)


def load_model_source(
    *, bundle: str | Path | None = None, checkpoint: str | Path | None = None, use_default: bool = False
) -> Bundle:
    """Exactly one of ``bundle`` / ``checkpoint`` -> a Bundle (what explain/predict/serve take).

    ``bundle="default"`` loads the packaged default bundle (:func:`resolve_bundle_path`); with
    ``use_default``, giving neither loads it too (predict, serve and ``explain IMAGE`` do that).
    """
    if bundle is not None and checkpoint is not None or (bundle is None and checkpoint is None and not use_default):
        raise ValueError("Give exactly one of --bundle or --checkpoint")
    if checkpoint is not None:
        return bundle_from_checkpoint(checkpoint)
    return load_bundle(resolve_bundle_path(DEFAULT_BUNDLE if bundle is None else bundle))


def is_bundle(path: str | Path) -> bool:
    p = Path(path)
    return (p / META).is_file() or (p.is_file() and p.name == META)


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    validate_meta(meta, path)
    tmp = path / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=json_default))
    tmp.replace(path / META)
