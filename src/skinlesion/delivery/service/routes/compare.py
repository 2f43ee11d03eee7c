"""``POST /compare``: two images of one lesion at two visits, compared (the E of ABCDE).

Multipart form: ``before`` and ``after`` (image files, each under the upload cap), optional
``pixel_spacing_mm`` (both images) or ``before_spacing_mm`` and ``after_spacing_mm``, and the
patient's ``age``, ``sex`` and ``site`` (used for both images). The answer is a
:class:`~skinlesion.records.Comparison` (see :func:`~skinlesion.delivery.compare.compare_visits`)
with the request's fields and the two registered panels as PNG; one audit row per image is written.
A rejected file's error names its field (``detail.field``).
"""

# No ``from __future__ import annotations``: the response TypedDict reads Annotated[...] at class creation.
import logging
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from pydantic import Field
from starlette.exceptions import HTTPException

from skinlesion.delivery.service.context import ServiceContext, get_context
from skinlesion.delivery.service.deps import accept_image, patient, user
from skinlesion.delivery.service.errors import ERRORS, reject
from skinlesion.delivery.service.routes.prediction import _png_b64, work_slot
from skinlesion.delivery.service.settings import PNG_MAX_SIDE
from skinlesion.records import Comparison

log = logging.getLogger(__name__)
router = APIRouter(tags=["comparison"])

_SPACING = dict(gt=0, allow_inf_nan=False)
BeforeFile = Annotated[UploadFile, File(description="The earlier image of the lesion: 8-bit RGB JPEG/PNG/TIFF/BMP/WebP.")]
AfterFile = Annotated[UploadFile, File(description="The later image of the same lesion.")]
Spacing = Annotated[float | None, Form(**_SPACING, description="mm per pixel of both images; without spacings sizes are not compared in mm.")]
BeforeSpacing = Annotated[float | None, Form(**_SPACING, description="mm per pixel of the before image (with after_spacing_mm).")]
AfterSpacing = Annotated[float | None, Form(**_SPACING, description="mm per pixel of the after image (with before_spacing_mm).")]


class CompareResponse(Comparison):
    """The comparison, with the request's fields and the registered images."""

    request_id: str
    elapsed_ms: float
    audit_ids: Annotated[list[int], Field(description="Audit rows written (before, after); empty without an audit log.")]
    audit_error: Annotated[str | None, Field(description="Set when the audit write failed (the result is still valid).")]
    before_png: Annotated[str, Field(description=f"Base64 PNG: the before image with its outline (longer side at most {PNG_MAX_SIDE} px).")]
    after_png: Annotated[str, Field(description="Base64 PNG: the after image registered onto the before image, both outlines.")]


def _accept(file: UploadFile, field: str, ctx: ServiceContext) -> tuple[bytes, np.ndarray, dict[str, Any]]:
    try:
        data, decoded, info = accept_image(file, ctx)
    except HTTPException as e:  # name the field: which of the two files was refused
        detail = dict(e.detail) if isinstance(e.detail, dict) else {"reason": "invalid_request", "message": str(e.detail)}
        raise HTTPException(e.status_code, {**detail, "message": f"{field}: {detail.get('message')}", "field": field}) from None
    return data, decoded.array, {**info, "converted_from": decoded.converted_from}


@router.post("/compare", response_model=CompareResponse, responses=ERRORS)
def compare(
    request: Request,
    response: Response,
    before: BeforeFile,
    after: AfterFile,
    user_id: Annotated[str, Depends(user)],
    record_in: Annotated[dict[str, Any] | None, Depends(patient)],
    ctx: Annotated[ServiceContext, Depends(get_context)],
    pixel_spacing_mm: Spacing = None,
    before_spacing_mm: BeforeSpacing = None,
    after_spacing_mm: AfterSpacing = None,
) -> dict[str, Any]:
    """Register the later image onto the earlier one, segment both, and report the change of diameter,
    area, asymmetry, border and colours, of the model's probabilities and flags, and whether the change
    is significant by the measured rule."""
    from skinlesion.delivery.compare import audit_comparison, compare_visits
    from skinlesion.delivery.compare_report import aligned_panels
    from skinlesion.explain.evolution import check_spacings

    started, request_id = time.perf_counter(), uuid.uuid4().hex
    if pixel_spacing_mm is not None and (before_spacing_mm is not None or after_spacing_mm is not None):
        raise reject(422, "invalid_request", "give pixel_spacing_mm (both images) or before_spacing_mm and after_spacing_mm, not both")
    if pixel_spacing_mm is not None:
        before_spacing_mm = after_spacing_mm = pixel_spacing_mm
    try:
        check_spacings(before_spacing_mm, after_spacing_mm)
    except ValueError as e:
        raise reject(422, "invalid_request", str(e)) from None
    with work_slot(ctx, request) as work:
        data_b, image_b, info_b = _accept(before, "before", ctx)
        data_a, image_a, info_a = _accept(after, "after", ctx)
        try:
            comparison, arrays = compare_visits(
                image_b, image_a, predictor=ctx.predictor, before_spacing_mm=before_spacing_mm, after_spacing_mm=after_spacing_mm,
                metadata=record_in, inputs=(info_b, info_a),
            )
            left, right = aligned_panels(image_b, arrays)
        except Exception:
            log.exception("request %s: the comparison failed", request_id)
            raise reject(500, "internal_error", f"the comparison failed (request {request_id}); see the server log") from None
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    audit_ids: list[int] = []
    audit_error = None
    if ctx.audit is not None:
        try:
            audit_ids = audit_comparison(ctx.audit, comparison, source="serve", request_id=request_id, user_id=user_id,
                                         image_bytes=(data_b, data_a), elapsed_ms=elapsed)  # fmt: skip
        except Exception:  # noqa: BLE001 - the result must not be lost to an audit failure
            log.exception("request %s: the audit write failed; the result is returned without audit rows", request_id)
            audit_error = f"the audit log could not be written (request {request_id}); the details are in the server log"
    ctx.stats.served("compare", work.seconds)
    log.info("compare %s: %s, registration %s, %.0f ms", request_id, comparison["summary"]["verdict"], comparison["registration"]["fit"], elapsed)
    response.headers["X-Request-ID"] = request_id
    return {
        **comparison, "request_id": request_id, "elapsed_ms": elapsed, "audit_ids": audit_ids, "audit_error": audit_error,
        "before_png": _png_b64(left), "after_png": _png_b64(right),
    }  # fmt: skip
