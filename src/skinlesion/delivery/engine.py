"""One prediction path for ``predict`` and ``serve``: a decision bundle run by PyTorch or ONNX Runtime.

An *engine* turns RGB uint8 images into member view logits ``M x (N, V, K)`` (every member with its
own preprocessing, every TTA view of the bundle); the bundle then applies weights, temperatures,
thresholds and the decision rule, so both engines share the same post-processing. MC-dropout
uncertainty and the review flag always run on the PyTorch members (ONNX graphs are exported in
eval mode, without dropout), with the same scoring and number of passes the bundle's review flag
was fitted with.

:class:`Predictor` serialises model calls with a lock: MC dropout switches module modes and
Grad-CAM registers hooks, so concurrent requests must not interleave inside one model.

Patient metadata (age, sex, site; :mod:`skinlesion.delivery.metadata`) is optional: it is checked,
fed to metadata fusion members in the prediction, the MC-dropout passes and the attention maps, and
every record says under ``metadata`` what was used. ONNX graphs take the image only, so the ONNX
engine refuses metadata for a bundle with fusion members (:class:`MetadataUnsupportedError`).

An image whose fusion members receive no metadata value is decided by the bundle's
*without-metadata* operating point (temperature and thresholds fitted on validation with the
metadata hidden, ``decision.without_metadata``) when the bundle has one; every record names the
operating point used (``operating_point``, ``operating_point_name``) and gives its thresholds.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from skinlesion.delivery.metadata import (
    MetadataUnsupportedError,
    metadata_members,
    metadata_summary,
    normalise_metadata,
    normalise_records,
)
from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, Bundle, BundlePrediction
from skinlesion.metrics.classification import to_jsonable

ENGINES = ("torch", "onnx")
NOTICE = (
    "Decision support for research use, not a diagnosis. Probabilities, thresholds, attention maps, "
    "ABCDE measurements and uncertainty describe the model and the image; a clinician must interpret them."
)


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


def make_engine(
    bundle: Bundle, engine: str = "torch", *, onnx_dir: str | Path | None = None, precision: str = "fp32",
    device: str | None = None,
) -> Engine:
    """``torch`` or ``onnx`` (ONNX files from ``skinlesion export onnx``; default ``<bundle>/onnx``)."""
    if engine == "torch":
        return TorchEngine(bundle, device)
    if engine == "onnx":
        from skinlesion.delivery.onnx_runtime import OnnxEngine

        return OnnxEngine(bundle, onnx_dir, precision=precision)
    raise ValueError(f"The 'engine' parameter must be one of {ENGINES}. Got {engine!r} instead.")


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


def decision_records(bundle: Bundle, pred: BundlePrediction) -> list[dict[str, Any]]:
    """Per image: probabilities, argmax, decision and what decided it (threshold or argmax), and the
    operating point (with or without metadata) whose temperature and thresholds were used."""
    points = {name: bundle.thresholds_for(name) for name in (WITH_METADATA, WITHOUT_METADATA)}
    conflict = bundle.meta["decision"].get("conflict", "priority")
    out = []
    for i in range(len(pred.decision)):
        fired = int(pred.fired[i])
        name = str(pred.operating_point[i])  # type: ignore[index]
        thresholds = points[name]
        out.append(
            {
                "probabilities": dict(zip(bundle.classes, pred.probs[i].astype(float).tolist(), strict=True)),
                "argmax": bundle.classes[int(pred.argmax[i])],
                "decision": bundle.classes[int(pred.decision[i])],
                "decided_by": f"threshold of {bundle.classes[fired]} ({thresholds[bundle.classes[fired]]:.4f})"
                if fired >= 0
                else "most probable class (no threshold reached)",
                "threshold_fired": bundle.classes[fired] if fired >= 0 else None,
                "thresholds": thresholds,
                "priority": bundle.priority if thresholds else None,
                "conflict": conflict if thresholds else None,
                "operating_point": operating_point_text(bundle, name, bool(pred.metadata_given[i])),  # type: ignore[index]
                "operating_point_name": name,
            }
        )
    return out


def default_mc_samples(bundle: Bundle) -> int:
    """The number of MC-dropout passes the bundle's review flag was fitted with, else 20."""
    return int((bundle.meta.get("review") or {}).get("n_samples", 20))


def uncertainty_records(
    bundle: Bundle, images: Sequence[np.ndarray], n_samples: int, seed: int = 0, metadata: Metadata = None
) -> list[dict[str, Any]]:
    """Per image: MC-dropout entropy decomposition (nats) and the bundle's review flag.

    ``metadata``: one record per image, fed to metadata fusion members in every pass (None: missing).
    An image decided by the without-metadata operating point is scored with that point's
    temperatures and flagged by the review threshold fitted with the metadata hidden."""
    from skinlesion.uncertainty.mc_predict import (
        bundle_mc_predict,
        mc_operating_points,
        review_flag_from_bundle,
        review_point,
    )
    from skinlesion.uncertainty.mc_dropout import NotStochasticWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotStochasticWarning)
        # One call per image with the same seed: an image's dropout masks (hence its uncertainty
        # and review flag) do not depend on which other images share its batch or request.
        per_image = [
            bundle_mc_predict(bundle, [im], n_samples=n_samples, seed=seed, metadata=[metadata[i]] if metadata else None)
            for i, im in enumerate(images)
        ]
    mc = _stack_mc(per_image)
    points = mc_operating_points(bundle, metadata, len(images))
    reviews = {str(p): review_point(bundle, str(p)) for p in set(points.tolist())}
    flags = scores = None
    if bundle.meta.get("review"):
        flags = np.zeros(len(images), dtype=bool)
        scores = np.zeros(len(images))
        for point in reviews:
            rows = points == point
            flagger = review_flag_from_bundle(bundle, point)
            scores[rows] = np.asarray(flagger.score_of(mc))[rows]  # type: ignore[union-attr]
            flags[rows] = np.asarray(flagger.flag(scores[rows]))  # type: ignore[union-attr]
    out = []
    for i in range(len(images)):
        rec: dict[str, Any] = {
            "method": "Monte Carlo dropout (Gal & Ghahramani 2016), head and backbone dropout/drop-path, BatchNorm in eval",
            "n_samples": n_samples,
            "stochastic": bool(mc.stochastic),
            "units": "nats",
            "mean_probabilities": dict(zip(bundle.classes, mc.mean_probs[i].tolist(), strict=True)),
            "predictive_entropy": float(mc.predictive_entropy[i]),
            "aleatoric_expected_entropy": float(mc.expected_entropy[i]),
            "epistemic_mutual_information": float(mc.mutual_information[i]),
            "max_probability": float(mc.max_prob[i]),
            "warnings": [str(w.message) for w in caught],
        }
        review = reviews[str(points[i])]
        if review:
            rec["review"] = {
                "flag": bool(flags[i]),  # type: ignore[index]
                "score": review["score"],
                "value": float(scores[i]),  # type: ignore[index]
                "threshold": review["threshold"],
                "goal": f"{review['goal']} {review['target']} (chosen on validation)",
                "operating_point": str(points[i]),
                "fitted_on": review.get("fitted_on", "val"),
            }
        else:
            rec["review"] = {"flag": None, "note": "no review threshold in this bundle: run `skinlesion explain review BUNDLE`"}
        out.append(rec)
    return out


def _stack_mc(results: Sequence[Any]) -> Any:
    """Concatenate per-image MCResults along the image axis (same members, passes and weights)."""
    from skinlesion.uncertainty.mc_dropout import MCResult

    first = results[0]
    return MCResult.from_samples(
        np.concatenate([r.samples for r in results], axis=1),
        first.sample_weights,
        stochastic=any(r.stochastic for r in results),
        stochastic_layers=first.stochastic_layers,
    )


class Predictor:
    """A loaded bundle plus an engine: JSON-ready prediction records, optionally with explanations.

    ``mc_samples=None`` follows :func:`default_mc_samples`; 0 skips uncertainty (no review flag).
    Thread-safe: model calls hold :attr:`lock`.
    """

    def __init__(
        self,
        bundle: Bundle,
        engine: str = "torch",
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
        self.engine = make_engine(bundle, engine, onnx_dir=onnx_dir, precision=precision, device=device)
        self.mc_samples = default_mc_samples(bundle) if mc_samples is None else mc_samples
        self.seed = seed
        self.lock = threading.RLock()

    @property
    def accepts_metadata(self) -> bool:
        """False when metadata would not reach the fusion members (ONNX engine); True otherwise,
        also for a bundle without fusion members (there the metadata is recorded as not used)."""
        return bool(getattr(self.engine, "accepts_metadata", False)) or not metadata_members(self.bundle)

    def check_metadata(self, metadata: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[dict[str, Any]] | None:
        """Normalised records (None: all missing); :class:`~skinlesion.delivery.metadata.MetadataError`
        for an invalid value, :class:`MetadataUnsupportedError` when this engine cannot use them."""
        records = normalise_records(metadata, n)
        if records is not None and not self.accepts_metadata:
            names = [m.name for m in metadata_members(self.bundle)]
            raise MetadataUnsupportedError(
                f"the {self.engine_name} engine runs image-only graphs, but members {names} of this bundle use "
                "patient metadata: use the torch engine, or leave the metadata out"
            )
        return records

    @property
    def engine_name(self) -> str:
        return self.engine.name + (f"-{self.engine.precision}" if hasattr(self.engine, "precision") else "")

    def bundle_info(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "name": b.meta.get("name"),
            "id": b.bundle_id,
            "members": [m.name for m in b.members],
            "engine": self.engine_name,
        }

    def predict(
        self, images: Sequence[np.ndarray], metadata: Sequence[Mapping[str, Any] | None] | None = None
    ) -> list[dict[str, Any]]:
        """One record per RGB uint8 image: ``prediction``, ``uncertainty`` (or None), ``metadata``,
        ``bundle``, ``notice``.

        ``metadata``: one record per image (``{"age": 55, "sex": "male", "site": "back"}``, keys
        optional, None: missing) or None; checked before any model runs (see :meth:`check_metadata`).
        """
        if len(images) == 0:
            return []
        records = self.check_metadata(metadata, len(images))
        with self.lock:
            # Without metadata, the call of the original Engine protocol (engines that take images only).
            logits = self.engine.view_logits(images) if records is None else self.engine.view_logits(images, metadata=records)
            # Images without any metadata value (always, on image-only engines) use the bundle's
            # without-metadata operating point when it has one.
            pred = self.bundle.predict_from_logits(logits, metadata_given=self.bundle.metadata_given(records, len(images)))
            unc = (
                uncertainty_records(self.bundle, images, self.mc_samples, self.seed, metadata=records)
                if self.mc_samples > 0 else None
            )
        info = self.bundle_info()
        recs = decision_records(self.bundle, pred)
        return [
            to_jsonable({
                "notice": NOTICE, "bundle": info, "prediction": r, "uncertainty": unc[i] if unc is not None else None,
                "metadata": metadata_summary(self.bundle, records[i] if records is not None else None),
            })
            for i, r in enumerate(recs)
        ]

    def explain(
        self, image: np.ndarray, *, pixel_spacing_mm: float | None = None, method: str = "gradcam++",
        concepts: bool = False, class_name: str | None = None, record: dict[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The prediction record plus Grad-CAM(++) (PyTorch members), segmentation, ABCDE and TDS.

        ``record``: this image's record from :meth:`predict` when already computed (saves the
        MC-dropout passes; give the same ``metadata``). ``metadata``: the patient's age, sex and site
        (see :meth:`predict`), also used by the fusion members' attention maps. Returns ``(result,
        arrays)`` with arrays ``cam`` (H, W) in [0, 1] and ``mask`` (H, W) bool; ``result`` has the
        keys of a record plus ``attention``, ``segmentation``, ``abcde``, ``dermoscopy_score`` and
        ``concepts``.
        """
        from skinlesion.explain.pipeline import explain_image

        records = self.check_metadata([metadata], 1)
        rec = record if record is not None else self.predict([image], metadata=records)[0]
        with self.lock:
            result, arrays = explain_image(
                self.bundle, image, class_name=class_name, method=method, mc_samples=0,
                pixel_spacing_mm=pixel_spacing_mm, concepts=concepts, prediction=rec["prediction"],
                metadata=normalise_metadata(records[0]) if records is not None else None,
            )
        result["uncertainty"] = rec["uncertainty"]
        result["metadata"] = rec.get("metadata", result["metadata"])
        result["bundle"] = rec["bundle"]
        return result, arrays
