"""One prediction path for ``predict`` and ``serve``: a decision bundle run by PyTorch or ONNX Runtime.

An *engine* turns RGB uint8 images into member view logits ``M x (N, V, K)`` (every member with its
own preprocessing, every TTA view of the bundle); the bundle then applies weights, temperatures,
thresholds and the decision rule, so both engines share the same post-processing. MC-dropout
uncertainty and the review flag always run on the PyTorch members (ONNX graphs are exported in
eval mode, without dropout), with the same scoring and number of passes the bundle's review flag
was fitted with.

Every image gets one :class:`~skinlesion.records.PredictionRecord`, filled by :mod:`skinlesion.records`
(decision, uncertainty, metadata used); :meth:`Predictor.explain` adds the explanation
(:func:`skinlesion.explain.pipeline.explain_image`). :class:`Predictor` serialises model calls with a
lock: MC dropout switches module modes and Grad-CAM registers hooks, so concurrent requests must not
interleave inside one model.

Patient metadata (age, sex, site; :mod:`skinlesion.records.metadata`) is optional: it is checked,
fed to metadata fusion members in the prediction, the MC-dropout passes and the attention maps, and
every record says under ``metadata`` what was used. ONNX exports since manifest format 2 give fusion
members a metadata input; an older, image-only export refuses metadata for a bundle with fusion
members (:class:`MetadataUnsupportedError`, naming the command that re-exports).

``engine="auto"`` (the default) picks ONNX Runtime fp32 when the bundle has an ONNX export that
the ONNX engine accepts (manifest, members, weights, file hashes: the checks of
:class:`~skinlesion.delivery.onnx_runtime.OnnxEngine`) and that serves metadata whenever the
bundle has fusion members; else eager PyTorch. The choice and its reason are logged and kept in
:attr:`Predictor.engine_choice`; every record names the engine (``bundle.engine``). Explanations
(Grad-CAM) and MC dropout always run on the PyTorch members; the out-of-distribution gate reads
the image features of the ONNX engine's own pass when its graphs give them (format 3 exports),
else it runs its members in PyTorch.

An image whose fusion members receive no metadata value is decided by the bundle's
*without-metadata* operating point (temperature and thresholds fitted on validation with the
metadata hidden, ``decision.without_metadata``) when the bundle has one; every record names the
operating point used (``operating_point``, ``operating_point_name``) and gives its thresholds.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from skinlesion.delivery.metadata import MetadataUnsupportedError
from skinlesion.ensemble.bundle import Bundle
from skinlesion.explain.pipeline import explain_image
from skinlesion.records import (
    BundleRef,
    Explanation,
    PredictionRecord,
    bundle_ref,
    decision_records,
    check_mc_samples,
    default_mc_samples,
    gate_feature_members,
    metadata_members,
    metadata_summary,
    normalise_metadata,
    normalise_records,
    ood_records,
    prediction_record,
    uncertainty_records,
)

ENGINES = ("auto", "torch", "onnx")
DEFAULT_ENGINE = "auto"

log = logging.getLogger(__name__)


Metadata = Sequence[Mapping[str, Any]] | None


class Engine(Protocol):
    name: str
    #: Whether metadata given with the images reaches the bundle's fusion members.
    accepts_metadata: bool

    def view_logits(self, images: Sequence[np.ndarray], metadata: Metadata = None) -> list[np.ndarray]:
        """Member view logits ``M x (N, V, K)`` for RGB uint8 images (and one metadata record per
        image, or None: missing), in the bundle's member order."""
        ...


class TorchEngine:
    """Eager PyTorch members (CUDA when available unless ``device`` says otherwise)."""

    name = "torch"
    accepts_metadata = True

    def __init__(self, bundle: Bundle, device: str | None = None) -> None:
        self.bundle = bundle
        self.device = device

    def view_logits(self, images: Sequence[np.ndarray], metadata: Metadata = None) -> list[np.ndarray]:
        from skinlesion.ensemble.predict import images_view_logits

        views = self.bundle.tta.views
        return [images_view_logits(m, images, views, device=self.device, metadata=metadata) for m in self.bundle.members]


def choose_engine(
    bundle: Bundle, *, onnx_dir: str | Path | None = None, precision: str = "fp32", device: str | None = None
) -> tuple[Engine, str]:
    """What ``engine="auto"`` runs, and why: the ONNX engine when its checks accept the bundle's
    export and the export serves metadata whenever the bundle has fusion members, else PyTorch
    (also when ``device`` names an accelerator: the user asked for a PyTorch device)."""
    if device is not None and not str(device).startswith("cpu"):
        return TorchEngine(bundle, device), f"--device {device} is a PyTorch device"
    try:
        from skinlesion.delivery.onnx_runtime import OnnxEngine, OnnxError
    except ImportError as e:  # onnxruntime is an optional dependency
        return TorchEngine(bundle, device), f"ONNX Runtime is not installed ({e})"
    try:
        onnx = OnnxEngine(bundle, onnx_dir, precision=precision)
    except ImportError as e:
        return TorchEngine(bundle, device), f"ONNX Runtime is not installed ({e})"
    except OnnxError as e:
        return TorchEngine(bundle, device), f"no usable ONNX export: {e}"
    if not onnx.accepts_metadata:
        return TorchEngine(bundle, device), (
            f"the ONNX export in {onnx.onnx_dir} has image-only graphs for fusion members {onnx.image_only_fusion_members()}: "
            f"{onnx.metadata_fix()}to run on ONNX Runtime"
        )
    return onnx, f"the ONNX export in {onnx.onnx_dir} matches the bundle"


def make_engine(
    bundle: Bundle, engine: str = DEFAULT_ENGINE, *, onnx_dir: str | Path | None = None, precision: str = "fp32",
    device: str | None = None,
) -> Engine:
    """``auto`` (see :func:`choose_engine`), ``torch`` or ``onnx`` (ONNX files from ``skinlesion export
    onnx``; default ``<bundle>/onnx``)."""
    if engine == "auto":
        chosen, why = choose_engine(bundle, onnx_dir=onnx_dir, precision=precision, device=device)
        log.info("engine auto: %s (%s)", _engine_name(chosen), why)
        return chosen
    if engine == "torch":
        return TorchEngine(bundle, device)
    if engine == "onnx":
        from skinlesion.delivery.onnx_runtime import OnnxEngine

        return OnnxEngine(bundle, onnx_dir, precision=precision)
    raise ValueError(f"The 'engine' parameter must be one of {ENGINES}. Got {engine!r} instead.")


def _engine_name(engine: Engine) -> str:
    precision = getattr(engine, "precision", None)
    return engine.name + (f"-{precision}" if precision else "")


class Predictor:
    """A loaded bundle plus an engine: JSON-ready prediction records, optionally with explanations.

    ``engine``: ``auto`` (default: ONNX Runtime fp32 when the bundle has a matching export that
    serves what the bundle takes, else PyTorch; see :func:`choose_engine`), ``torch`` or ``onnx``;
    :attr:`engine_choice` says what was chosen and why.

    ``mc_samples=None`` follows the bundle (:func:`default_mc_samples` MC-dropout passes, or none when
    its review flag scores the members x TTA views of the prediction); 0 skips uncertainty (no review flag).
    Thread-safe: model calls hold :attr:`lock`.
    """

    def __init__(
        self,
        bundle: Bundle,
        engine: str = DEFAULT_ENGINE,
        *,
        mc_samples: int | None = None,
        onnx_dir: str | Path | None = None,
        precision: str = "fp32",
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        if mc_samples is not None and (not isinstance(mc_samples, int) or mc_samples < 0):
            raise ValueError(f"The 'mc_samples' parameter must be an integer >= 0. Got {mc_samples!r} instead.")
        self.bundle = bundle
        if engine == "auto":
            self.engine, why = choose_engine(bundle, onnx_dir=onnx_dir, precision=precision, device=device)
            self.engine_choice = f"auto: {_engine_name(self.engine)} ({why})"
        else:
            self.engine = make_engine(bundle, engine, onnx_dir=onnx_dir, precision=precision, device=device)
            self.engine_choice = f"{_engine_name(self.engine)} (as asked)"
        log.info("engine %s", self.engine_choice)
        self.with_uncertainty = check_mc_samples(bundle, mc_samples)
        self.mc_samples = default_mc_samples(bundle) if mc_samples is None else mc_samples
        self.seed = seed
        self.device = device
        self.lock = threading.RLock()

    @property
    def accepts_metadata(self) -> bool:
        """False when metadata would not reach the fusion members (ONNX engine); True otherwise,
        also for a bundle without fusion members (there the metadata is recorded as not used)."""
        return bool(getattr(self.engine, "accepts_metadata", False)) or not metadata_members(self.bundle)

    def check_metadata(self, metadata: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[dict[str, Any]] | None:
        """Normalised records (None: all missing); :class:`~skinlesion.records.metadata.MetadataError`
        for an invalid value, :class:`MetadataUnsupportedError` when this engine cannot use them."""
        records = normalise_records(metadata, n)
        if records is not None and not self.accepts_metadata:
            names = [m.name for m in metadata_members(self.bundle)]
            fix = getattr(self.engine, "metadata_fix", None)
            raise MetadataUnsupportedError(
                f"the {self.engine_name} engine runs image-only graphs, but members {names} of this bundle use "
                f"patient metadata: {fix() if callable(fix) else ''}use the torch engine, or leave the metadata out"
            )
        return records

    @property
    def engine_name(self) -> str:
        return _engine_name(self.engine)

    def bundle_info(self) -> BundleRef:
        """The records' ``bundle``: name, id, members and this engine."""
        return bundle_ref(self.bundle, self.engine_name)

    def predict(
        self, images: Sequence[np.ndarray], metadata: Sequence[Mapping[str, Any] | None] | None = None
    ) -> list[PredictionRecord]:
        """One :class:`~skinlesion.records.PredictionRecord` per RGB uint8 image: ``notice``,
        ``bundle``, ``prediction``, ``uncertainty`` (or None), ``metadata``.

        ``metadata``: one record per image (``{"age": 55, "sex": "male", "site": "back"}``, keys
        optional, None: missing) or None; checked before any model runs (see :meth:`check_metadata`).
        """
        if len(images) == 0:
            return []
        records = self.check_metadata(metadata, len(images))
        with self.lock:
            # An engine that gives the pooled image features of its own pass (ONNX, format 3) spares the
            # out-of-distribution gate a second pass of its members.
            gate_members = gate_feature_members(self.bundle)
            with_features = getattr(self.engine, "view_logits_and_features", None)
            features: dict[str, np.ndarray] = {}
            if gate_members and with_features is not None:
                logits, features = with_features(images, records, features_of=gate_members)
            elif records is None:  # the call of the original Engine protocol (engines that take images only)
                logits = self.engine.view_logits(images)
            else:
                logits = self.engine.view_logits(images, metadata=records)
            # Images without any metadata value (always, on image-only engines) use the bundle's
            # without-metadata operating point when it has one.
            pred = self.bundle.predict_from_logits(logits, metadata_given=self.bundle.metadata_given(records, len(images)))
            unc = (
                uncertainty_records(self.bundle, images, self.mc_samples, self.seed, metadata=records, view_logits=logits,
                                    decisions=self.bundle.policy_decision_of(pred), probs=pred.probs)
                if self.with_uncertainty else None
            )
            ood = ood_records(self.bundle, images, device=self.device, features=features)
        info = self.bundle_info()
        return [
            prediction_record(
                info, p, unc[i] if unc is not None else None,
                metadata_summary(self.bundle, records[i] if records is not None else None),
                ood[i] if ood is not None else None,
            )
            for i, p in enumerate(decision_records(self.bundle, pred))
        ]

    def explain(
        self, image: np.ndarray, *, pixel_spacing_mm: float | None = None, method: str | None = None,
        concepts: bool = False, class_name: str | None = None, record: PredictionRecord | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Explanation, dict[str, np.ndarray]]:
        """The prediction record plus the attention map (PyTorch members; ``method`` None: the backbone's
        measured default, e.g. Layer-CAM at ``blocks.4`` for EfficientNet-Lite), segmentation, ABCDE and TDS.

        ``record``: this image's record from :meth:`predict` when already computed (saves the
        MC-dropout passes; give the same ``metadata``). ``metadata``: the patient's age, sex and site
        (see :meth:`predict`), also used by the fusion members' attention maps. Returns ``(result,
        arrays)`` with arrays ``cam`` (H, W) in [0, 1] and ``mask`` (H, W) bool; ``result`` is an
        :class:`~skinlesion.records.Explanation`: the record plus ``attention``, ``segmentation``,
        ``abcde``, ``dermoscopy_score`` and ``concepts``.
        """
        records = self.check_metadata([metadata], 1)
        rec = record if record is not None else self.predict([image], metadata=records)[0]
        with self.lock:
            return explain_image(
                self.bundle, image, class_name=class_name, method=method, pixel_spacing_mm=pixel_spacing_mm,
                concepts=concepts, record=rec, metadata=normalise_metadata(records[0]) if records is not None else None,
            )
