"""Explain one image end to end: prediction, attention map, ABCDE, concepts and uncertainty.

``explain_image`` works on a decision bundle or a bare checkpoint (a one-member bundle) and returns
one JSON-serialisable :class:`~skinlesion.records.Explanation` (the prediction record, filled by
:mod:`skinlesion.records` or given, plus the explanation); ``write_explanation`` also writes the
overlay PNGs next to it. Every part is a decision aid: the result says what the model attended to,
what the lesion measures, which concepts push the explained class, and how unsure the model is,
never a diagnosis.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, cast

import numpy as np

import skinlesion
from skinlesion.ensemble.bundle import Bundle
from skinlesion.metrics.classification import to_jsonable
from skinlesion.records import (
    Explanation,
    PredictionRecord,
    Uncertainty,
    bundle_ref,
    check_mc_samples,
    decision_records,
    default_mc_samples,
    metadata_summary,
    normalise_metadata,
    ood_records,
    prediction_record,
    uncertainty_records,
)

log = logging.getLogger(__name__)


def _class_index(bundle: Bundle, class_name: str | None, predicted: int) -> int:
    if class_name is None:
        return predicted
    if class_name not in bundle.classes:
        raise ValueError(f"The 'class' parameter must be one of {list(bundle.classes)}. Got {class_name!r} instead.")
    return bundle.classes.index(class_name)


def _uncertainty(
    bundle: Bundle, image: np.ndarray, n_samples: int, seed: int, metadata: dict[str, Any] | None, prediction: Any
) -> Uncertainty:
    """The uncertainty part of one image, its review read at ``prediction``'s decision and probabilities."""
    probs = np.asarray([[float(prediction["probabilities"][c]) for c in bundle.classes]])
    return uncertainty_records(bundle, [image], n_samples, seed, metadata=[metadata] if metadata else None,
                               decisions=[bundle.classes.index(prediction["decision"])], probs=probs)[0]


def _concepts(bundle: Bundle, image: np.ndarray, class_index: int) -> dict[str, Any]:
    folder = bundle.path / "concepts" if bundle.path is not None else None
    if folder is None or not folder.is_dir():
        return {"available": False, "note": "no concept bank: run `skinlesion explain concepts --bundle BUNDLE`"}
    from dataclasses import asdict

    from skinlesion.explain.concept_bank import ConceptBank, concept_sensitivity

    bank = ConceptBank.load(folder)
    sens = concept_sensitivity(bundle, bank, image, class_index)
    return {
        "available": True,
        "class": bundle.classes[class_index],
        "method": "TCAV (Kim et al. 2018): per-image directional derivative of the class logit along each concept's CAV",
        "concepts": {name: {**to_jsonable(asdict(s)), "direction": s.direction, "summary": s.summary()} for name, s in sens.items()},
    }


def explain_image(
    bundle: Bundle,
    image: np.ndarray,
    *,
    class_name: str | None = None,
    method: str | None = None,
    cam_views: str = "identity",
    mc_samples: int | None = None,
    pixel_spacing_mm: float | None = None,
    concepts: bool = True,
    seed: int = 0,
    record: PredictionRecord | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Explanation, dict[str, np.ndarray]]:
    """Explain one RGB uint8 image. Returns ``(explanation, arrays)`` (arrays: ``cam``, ``mask``).

    ``record``: the prediction record already computed for this image (e.g. by ONNX Runtime in
    :class:`~skinlesion.delivery.engine.Predictor`): its decision is explained and its bundle,
    uncertainty and metadata are kept. By default the PyTorch members predict, and
    ``mc_samples=None`` uses the number of MC-dropout passes the bundle's review flag was fitted
    with (its scores depend on it), else 20; 0 skips the uncertainty part.
    ``metadata``: the patient's ``{"age", "sex", "site"}`` (any may be absent) for metadata fusion
    members: used by the prediction, the attention map and the uncertainty; recorded under ``metadata``.
    ``method``: the CAM method (``None``: the members' registry default, at the registry's layers);
    ``attention.faithfulness`` says how faithful that map was measured to be
    (:func:`~skinlesion.explain.faithfulness_note.faithfulness_note`), or that it was not.
    """
    from skinlesion.inference.tta import parse_views
    from skinlesion.explain.cam import ensemble_cam
    from skinlesion.explain.faithfulness import mass_in_mask
    from skinlesion.explain.faithfulness_note import config_name, faithfulness_note
    from skinlesion.explain.segmentation import segment_lesion
    from skinlesion.explain.tds import dermoscopy_score

    given = normalise_metadata(metadata)
    records = [given] if given is not None else None
    prediction = record["prediction"] if record is not None else decision_records(bundle, bundle.predict_images([image], metadata=records))[0]
    k = _class_index(bundle, class_name, bundle.classes.index(prediction["decision"]))
    cam = ensemble_cam(bundle.members, [image], class_index=k, method=method, views=parse_views(cam_views), metadata=records)
    summary = metadata_summary(bundle, given)
    seg = segment_lesion(image)
    found = seg.quality != "not_found" and bool(seg.mask.any())
    tds, abcde = dermoscopy_score(image, seg.mask, pixel_spacing_mm) if found else (None, None)
    if record is None:
        n_samples = default_mc_samples(bundle) if mc_samples is None else mc_samples
        unc = _uncertainty(bundle, image, n_samples, seed, given, prediction) if check_mc_samples(bundle, mc_samples) else None
        record = prediction_record(bundle_ref(bundle), prediction, unc, summary, _first(ood_records(bundle, [image])))

    result = Explanation(
        notice=record["notice"],
        bundle=record["bundle"],
        prediction=record["prediction"],
        attention={
            "method": cam.method,
            "layers": list(cam.layers),
            "class": bundle.classes[k],
            "views": list(cam.views),
            "member_weights": dict(zip(cam.member_names, np.asarray(cam.weights).tolist(), strict=True)),
            "mass_in_lesion": mass_in_mask(cam.maps[0], seg.mask) if found else None,
            "lesion_area_fraction": float(seg.mask.mean()),
            "metadata": "used" if summary["used"] is not None else "not given" if summary["members_using_metadata"] else "not used by this bundle",
            "faithfulness": faithfulness_note(
                bundle, config_name(cam.method, cam.layers, cam.views, cam.input_scale), class_name=bundle.classes[k]
            ),
        },
        segmentation={"quality": seg.quality, "method": seg.method, "bbox_top_bottom_left_right": list(seg.bbox)},
        abcde=to_jsonable(abcde.to_dict()) if abcde is not None else None,
        dermoscopy_score=to_jsonable(tds.to_dict()) if tds is not None else None,
        uncertainty=record["uncertainty"],
        metadata=record.get("metadata", summary),
        ood=record.get("ood"),
        concepts=_concepts(bundle, image, k) if concepts else None,
        skinlesion_version=skinlesion.__version__,
    )
    return cast(Explanation, to_jsonable(result)), {"cam": cam.maps[0], "mask": seg.mask}


def write_explanation(
    bundle: Bundle, image_path: str | Path, out_dir: str | Path, **kw: Any
) -> dict[str, Any]:
    """Explain the image file and write ``<stem>.json``, ``<stem>_cam.png`` and ``<stem>_mask.png`` in
    ``out_dir``. Returns what ``<stem>.json`` holds: the explanation plus ``input`` and ``files``."""
    from PIL import Image

    from skinlesion.data.table import read_rgb
    from skinlesion.explain.cam import overlay_png

    image_path = Path(image_path)
    image = read_rgb(str(image_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result, arrays = explain_image(bundle, image, **kw)
    stem = image_path.stem
    cam_png = overlay_png(image, arrays["cam"], out / f"{stem}_cam.png")
    outline = image.copy()
    mask = arrays["mask"]
    edge = mask & ~_erode(mask)
    outline[edge] = (0, 255, 255)
    Image.fromarray(outline).save(out / f"{stem}_mask.png")
    written = {
        **result,
        "input": {"path": str(image_path), "sha256": hashlib.sha256(image_path.read_bytes()).hexdigest(), "shape": list(image.shape)},
        "files": {"cam_overlay": cam_png.name, "segmentation_outline": f"{stem}_mask.png"},
    }
    (out / f"{stem}.json").write_text(json.dumps(written, indent=2))
    return written


def _first(items: list[Any] | None) -> Any:
    return items[0] if items else None


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(mask, iterations=1)
