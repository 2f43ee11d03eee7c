"""``POST /predict`` and ``POST /explain``: the prediction record (and explanation) of one upload."""

from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from skinlesion.delivery.service.context import ServiceContext, get_context
from skinlesion.delivery.service.deps import accept_image, patient, user
from skinlesion.delivery.service.errors import ERRORS, reject
from skinlesion.delivery.service.guards import busy
from skinlesion.delivery.service.schemas import ExplainResponse, PredictResponse
from skinlesion.delivery.service.settings import PNG_MAX_SIDE
from skinlesion.records import Explanation, PredictionRecord, record_columns

log = logging.getLogger(__name__)
router = APIRouter(tags=["prediction"])
ImageFile = Annotated[UploadFile, File(
    description="A dermoscopic image: JPEG, PNG, TIFF, BMP, WebP, GIF, JPEG 2000, AVIF or another raster format Pillow reads and "
    "writes; made 8-bit RGB (see converted_from).",
)]
PixelSpacing = Annotated[
    float | None, Form(gt=0, allow_inf_nan=False, description="mm per pixel; without it ABCDE sizes stay in pixels.")
]
UserId = Annotated[str, Depends(user)]
PatientMetadata = Annotated[dict[str, Any] | None, Depends(patient)]
Context = Annotated[ServiceContext, Depends(get_context)]


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
def predict(
    request: Request, response: Response, file: ImageFile, user_id: UserId, record_in: PatientMetadata, ctx: Context
) -> dict[str, Any]:
    """Probabilities, the decision and the threshold that made it, MC-dropout uncertainty and the review flag."""

    def run(image: np.ndarray) -> tuple[PredictionRecord, dict[str, str]]:
        if record_in is None:
            return ctx.predictor.predict([image])[0], {}
        return ctx.predictor.predict([image], metadata=[record_in])[0], {}

    return _serve(ctx, "predict", request, file, user_id, response, run)


@router.post("/explain", response_model=ExplainResponse, responses=ERRORS)
def explain(
    request: Request, response: Response, file: ImageFile, user_id: UserId, record_in: PatientMetadata, ctx: Context,
    pixel_spacing_mm: PixelSpacing = None,
) -> dict[str, Any]:
    """/predict plus the Grad-CAM++ overlay, the segmentation outline, ABCDE and the Total Dermoscopy Score."""

    def run(image: np.ndarray) -> tuple[Explanation, dict[str, str]]:
        from skinlesion.explain.cam import overlay_array

        if record_in is None:
            result, arrays = ctx.predictor.explain(image, pixel_spacing_mm=pixel_spacing_mm)
        else:
            result, arrays = ctx.predictor.explain(image, pixel_spacing_mm=pixel_spacing_mm, metadata=record_in)
        return result, {"cam_png": _png_b64(overlay_array(image, arrays["cam"])), "mask_png": _png_b64(outline(image, arrays["mask"]))}

    return _serve(ctx, "explain", request, file, user_id, response, run)


def _serve(
    ctx: ServiceContext, kind: str, request: Request, file: UploadFile, user_id: str, response: Response,
    run: Callable[[np.ndarray], tuple[PredictionRecord, dict[str, str]]],
) -> dict[str, Any]:
    """In a work slot (503 when none frees up before the request's deadline): check the upload, ``run``
    the model on it (its record and extra fields), audit the record, count and log the request, and
    put the request's fields around the record."""
    started, request_id = time.perf_counter(), uuid.uuid4().hex
    with work_slot(ctx, request) as work:
        data, decoded, meta = accept_image(file, ctx)
        try:
            record, extra = run(decoded.array)
        except Exception:
            log.exception("request %s: the model failed", request_id)
            raise reject(500, "internal_error", f"the model failed on this image (request {request_id}); see the server log") from None
    record["converted_from"] = decoded.converted_from
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    audit_id = audit_error = None
    if ctx.audit is not None:
        try:
            audit_id = ctx.audit.record(source="serve", input_sha256=meta["sha256"], input_name=meta["name"], record=record,
                                        user_id=user_id, image_bytes=data, request_id=request_id, elapsed_ms=elapsed)
        except Exception:  # noqa: BLE001 - the result must not be lost to an audit failure
            log.exception("request %s: the audit write failed; the result is returned without an audit row", request_id)
            audit_error = f"the audit log could not be written (request {request_id}); the details are in the server log"
    ctx.stats.served(kind, work.seconds)
    cols = record_columns(record)
    log.info("%s %s: %s, review %s, %.0f ms, sha256 %s", kind, request_id, cols["decision"], cols["review_flag"], elapsed, meta["sha256"][:12])
    response.headers["X-Request-ID"] = request_id
    return {"request_id": request_id, "input": meta, **record, "elapsed_ms": elapsed, "audit_id": audit_id, "audit_error": audit_error, **extra}


class _Work:
    seconds = 0.0


@contextmanager
def work_slot(ctx: ServiceContext, request: Request) -> Iterator[_Work]:
    """Hold one of the service's work slots (503 ``busy`` when none frees up before the request's
    deadline); the yielded object's ``seconds`` is how long it was held, set on exit."""
    deadline = getattr(request.state, "deadline", None)
    if not ctx.work.acquire(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.0)):
        ctx.stats.add("busy")
        raise busy(ctx.stats.retry_after(ctx.settings.max_in_flight, ctx.settings.max_active), "no work slot became free in time")
    work, started = _Work(), time.perf_counter()
    try:
        yield work
    finally:
        work.seconds = time.perf_counter() - started
        ctx.work.release()


def _png_b64(rgb: np.ndarray) -> str:
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((PNG_MAX_SIDE, PNG_MAX_SIDE))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask's border drawn in cyan (thicker on large images)."""
    from scipy import ndimage

    width = max(1, round(max(image.shape[:2]) / 400))
    out = image.copy()
    out[mask & ~ndimage.binary_erosion(mask, iterations=width)] = (0, 255, 255)
    return out
