"""Follow-up visits for ``skinlesion compare``, ``POST /compare`` and the web page: one
:class:`~skinlesion.records.Comparison` of two images of one lesion, its pictures, files and audit rows.

:func:`compare_visits` runs :func:`~skinlesion.explain.evolution.compare_lesions` (segmentations,
ABCDE, registration, the change rule) and, with a :class:`~skinlesion.delivery.engine.Predictor`,
the model on both images (one call, the same patient metadata for both), and puts the change of the
model's probabilities and flags beside it (:func:`~skinlesion.records.model_change`).
:func:`write_comparison` writes ``comparison.json``, ``aligned.png`` and ``report.html``, and
:func:`audit_comparison` logs one audit row per image (``source`` ``<source>:compare``, one request
id, the comparison's summary in each row's JSON).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

import skinlesion
from skinlesion._json import json_default
from skinlesion.delivery.compare_report import render_comparison_report, side_by_side
from skinlesion.explain.evolution import check_spacings, compare_lesions
from skinlesion.metrics.classification import to_jsonable
from skinlesion.records import NOTICE, Comparison, model_change

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import Predictor

COMPARISON_JSON = "comparison.json"
ALIGNED_PNG = "aligned.png"
REPORT_HTML = "report.html"


def image_info(data: bytes | None, image: np.ndarray, name: str | None) -> dict[str, Any]:
    """What a comparison says about an input: its name, sha256 (of the file's bytes), width and height."""
    info: dict[str, Any] = {"name": name}
    if data is not None:
        info["sha256"] = hashlib.sha256(data).hexdigest()
        info["bytes"] = len(data)
    info["width"], info["height"] = int(image.shape[1]), int(image.shape[0])
    return info


def compare_visits(
    before: np.ndarray,
    after: np.ndarray,
    *,
    predictor: Predictor | None = None,
    before_spacing_mm: float | None = None,
    after_spacing_mm: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    inputs: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> tuple[Comparison, dict[str, np.ndarray]]:
    """Compare two RGB uint8 images of one lesion (``after`` taken later).

    Spacings and metadata are checked before any model runs (a ``ValueError`` names what is wrong;
    metadata errors are :class:`~skinlesion.records.metadata.MetadataError`). Returns the
    :class:`~skinlesion.records.Comparison` and the arrays of
    :class:`~skinlesion.explain.evolution.LesionComparison` (masks, the registered after image).
    """
    sb, sa = check_spacings(before_spacing_mm, after_spacing_mm)
    records = None
    if predictor is not None:
        checked = predictor.check_metadata([metadata, metadata], 2) if metadata else None
        records = predictor.predict([before, after], metadata=checked)
    found = compare_lesions(before, after, before_spacing_mm=sb, after_spacing_mm=sa)
    r = found.result
    given = inputs or (image_info(None, before, "before"), image_info(None, after, "after"))

    def visit(role: str, k: int) -> dict[str, Any]:
        return {
            "input": dict(given[k]),
            "pixel_spacing_mm": r["pixel_spacing_mm"][role],
            "record": None if records is None else records[k],
            "segmentation": r["segmentation"][role],
            "abcde": r["abcde"][role],
        }

    comparison = {
        "notice": f"{NOTICE} {r['notice']}",
        "before": visit("before", 0),
        "after": visit("after", 1),
        "registration": r["registration"],
        "evolution": r["evolution"],
        "summary": r["summary"],
        "model": None if records is None else model_change(records[0], records[1]),
        "bundle": None if records is None else records[0]["bundle"],
        "skinlesion_version": skinlesion.__version__,
    }
    return cast(Comparison, to_jsonable(comparison)), found.arrays


def write_comparison(
    comparison: Comparison, before: np.ndarray, after: np.ndarray, arrays: Mapping[str, np.ndarray], out_dir: str | Path
) -> dict[str, Path]:
    """Write ``comparison.json``, ``aligned.png`` (both images side by side on the first one's grid)
    and ``report.html`` into ``out_dir``. Returns their paths."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / COMPARISON_JSON, "aligned": out / ALIGNED_PNG, "report": out / REPORT_HTML}
    Image.fromarray(side_by_side(before, arrays)).save(paths["aligned"])
    paths["report"].write_text(render_comparison_report(comparison, before, after, arrays), encoding="utf-8")
    files = {"aligned": ALIGNED_PNG, "report": REPORT_HTML}
    paths["json"].write_text(json.dumps({**comparison, "files": files}, indent=2, default=json_default), encoding="utf-8")
    return paths


def audit_comparison(
    audit: AuditLog,
    comparison: Comparison | Mapping[str, Any],
    *,
    source: str,
    request_id: str | None = None,
    user_id: str | None = None,
    image_bytes: tuple[bytes | None, bytes | None] = (None, None),
    elapsed_ms: float | None = None,
) -> list[int]:
    """One audit row per image of a comparison that has model records: its prediction record plus
    ``comparison`` (role, the other image's sha256, registration, evolution and summary). Returns the
    row ids (before, after); none without a model."""
    rows = []
    shared = {k: comparison.get(k) for k in ("registration", "evolution", "summary")}
    for k, (role, other) in enumerate((("before", "after"), ("after", "before"))):
        visit = comparison[role]
        if visit.get("record") is None:
            return []
        record = {**visit["record"], "comparison": {"role": role, "other_sha256": comparison[other]["input"].get("sha256"), **shared}}
        rows.append(audit.record(
            source=f"{source}:compare", input_sha256=visit["input"].get("sha256") or "unknown", input_name=visit["input"].get("name"),
            record=record, user_id=user_id, image_bytes=image_bytes[k], request_id=request_id, elapsed_ms=elapsed_ms,
        ))  # fmt: skip
    return rows
