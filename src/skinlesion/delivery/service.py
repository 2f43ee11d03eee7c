"""``skinlesion serve``: a REST service and a web page over one loaded decision bundle (FastAPI).

=================  ====  =============================================================================
route              key   answers
=================  ====  =============================================================================
``GET /health``    no    200: status, bundle id, engine, uptime, requests served, upload limits
``GET /model``     yes   200: bundle metadata (classes, members, TTA, temperature, thresholds and how
                         each was chosen, review flag, provenance); no server file paths
``POST /predict``  yes   200: probabilities, decision, what decided it, uncertainty, review flag
``POST /explain``  yes   200: the same plus Grad-CAM++ overlay and segmentation outline (base64 PNG),
                         attention, ABCDE and Total Dermoscopy Score
``GET /``          no    the web page (``static/``: offline, no external resources)
``/docs``          no    OpenAPI (``/openapi.json``; Swagger UI served from the package, offline)
=================  ====  =============================================================================

Uploads are multipart form field ``file`` with optional patient metadata fields ``age``, ``sex`` and
``site`` (used by metadata fusion members; absent or empty = missing; the result's ``metadata``
says what was used) (``/explain`` also takes ``pixel_spacing_mm``). Every
rejection is a 4xx JSON body ``{"detail": {"reason": CODE, "message": TEXT}}`` and the service stays
up: 401 ``api_key_missing``, 403 ``api_key_invalid``, 413 ``too_large`` (request body or file over the
cap: stopped while streaming, before the rest is read) and ``too_many_pixels`` (from the image
header, before decoding), 415 ``not_an_image`` and ``unsupported_mode`` (CMYK, alpha, 16-bit,
grayscale: see :mod:`skinlesion.delivery.images`), 422 ``empty``, ``too_small``, ``truncated``,
``missing_file``, ``invalid_request``, ``invalid_metadata`` (e.g. age ``abc``, sex ``x``) and
``metadata_unsupported_by_engine`` (metadata for fusion members on the ONNX engine); 404/405 for unknown routes; 500 ``internal_error`` (logged
with the request id; the next request is served normally). The content type a client declares is
not trusted: the bytes are decoded and checked.

The model is loaded once (a :class:`~skinlesion.delivery.engine.Predictor`). Endpoints are plain
``def`` functions, so FastAPI runs them in its thread pool; uploads are decoded in parallel and
:attr:`Predictor.lock` serialises model use (MC dropout and Grad-CAM hooks change module state).

Every successful prediction is written to the :class:`~skinlesion.delivery.audit.AuditLog` with
``source="serve"`` and the user id (:func:`~skinlesion.delivery.audit.api_key_id`, or
``anonymous``); image bytes only when the log was opened with ``store_images=True``. If the audit
write fails the result is still returned, with ``audit_error`` set, and the failure is logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Request, Response, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import skinlesion
from skinlesion.delivery.engine import NOTICE
from skinlesion.delivery.images import ImageLimits, ImageRejected, decode_image
from skinlesion.delivery.metadata import HAM10000_SITES, MetadataError, normalise_metadata

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import Predictor

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
API_KEY_HEADER = "X-API-Key"
#: HTTP status of each :class:`~skinlesion.delivery.images.ImageRejected` reason.
REJECTION_STATUS = {
    "too_large": 413, "too_many_pixels": 413, "not_an_image": 415, "unsupported_mode": 415,
    "empty": 422, "too_small": 422, "truncated": 422, "missing": 422, "unreadable": 422,
}
#: Room for multipart headers and form fields on top of the file cap (the request-body cap).
MULTIPART_OVERHEAD = 64 * 1024
#: The overlay PNGs in ``/explain`` are scaled down to this longer side (the ABCDE run at full size).
PNG_MAX_SIDE = 1024
_CHUNK = 1024 * 1024
AGE_HELP = "Patient age in years, 0 to 120 (optional metadata; empty or absent: unknown)."
SEX_HELP = "male or female (optional metadata; empty, absent or 'unknown': unknown)."
SITE_HELP = f"Anatomical site, as HAM10000 names it: {', '.join(HAM10000_SITES)} (optional; empty or absent: unknown)."
_STATUS_REASON = {400: "bad_request", 401: "api_key_missing", 403: "api_key_invalid", 404: "not_found",
                  405: "method_not_allowed", 413: "too_large", 500: "internal_error"}


# -- response schemas (documented in /openapi.json; extra keys from newer records pass through) --
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    reason: str = Field(description="Stable code: api_key_missing, too_large, not_an_image, unsupported_mode, ...")
    message: str = Field(description="What was wrong, in words.")


class ErrorResponse(BaseModel):
    detail: ErrorDetail


class InputInfo(BaseModel):
    name: str | None = Field(description="The uploaded file name (as the client sent it).")
    sha256: str = Field(description="sha256 of the uploaded bytes (also in the audit log).")
    bytes: int
    width: int
    height: int


class BundleRef(_Open):
    name: str | None
    id: str = Field(description="sha256 of bundle.json: names the exact model.")
    members: list[str]
    engine: str | None = None


class Prediction(_Open):
    probabilities: dict[str, float] = Field(description="Calibrated ensemble probability per class.")
    argmax: str
    decision: str = Field(description="The class the bundle's decision rule chose.")
    decided_by: str = Field(description="The threshold that fired, or 'most probable class'.")
    threshold_fired: str | None
    thresholds: dict[str, float | None] = Field(description="The thresholds of the operating point that decided.")
    priority: list[str] | None
    conflict: str | None
    operating_point: str | None = Field(
        None, description="Whose temperature and thresholds decided, in words: with metadata, or without metadata "
        "(fitted on validation with the metadata hidden; used when the image came without any metadata value).",
    )
    operating_point_name: str | None = Field(None, description="with_metadata or without_metadata.")


class Review(_Open):
    flag: bool | None = Field(description="True: refer for review (uncertain); None: the bundle has no review threshold.")
    score: str | None = None
    value: float | None = None
    threshold: float | None = None


class Uncertainty(_Open):
    method: str
    n_samples: int
    units: str
    mean_probabilities: dict[str, float]
    predictive_entropy: float | None
    aleatoric_expected_entropy: float | None
    epistemic_mutual_information: float | None
    review: Review


class MetadataInfo(_Open):
    used: dict[str, Any] | None = Field(
        description="The normalised age, sex and site the metadata fusion members received (null: missing); null when none was given."
    )
    members_using_metadata: list[str] = Field(description="Members that take metadata (empty: image-only bundle).")
    features: list[str] = Field(description="The metadata fields this bundle's members use.")
    ignored: dict[str, str] | None = Field(None, description="Given but not used, and why (e.g. a site never seen in training).")


class PredictResponse(_Open):
    request_id: str
    input: InputInfo
    notice: str
    bundle: BundleRef
    prediction: Prediction
    uncertainty: Uncertainty | None = Field(description="MC-dropout uncertainty; None when the service runs with --mc-samples 0.")
    metadata: MetadataInfo | None = Field(None, description="The patient metadata used (form fields age, sex, site).")
    elapsed_ms: float
    audit_id: int | None = Field(description="Row id in the audit log; None when not written.")
    audit_error: str | None = Field(description="Set when the audit write failed (the result is still valid).")


class ExplainResponse(PredictResponse):
    attention: dict[str, Any] = Field(description="Grad-CAM++ method, class explained, share of the map inside the lesion.")
    segmentation: dict[str, Any]
    abcde: dict[str, Any] | None = Field(description="ABCDE measurements; None when no lesion was segmented.")
    dermoscopy_score: dict[str, Any] | None = Field(description="Total Dermoscopy Score (ABCD rule).")
    cam_png: str = Field(description=f"Base64 PNG: the CAM over the image (longer side at most {PNG_MAX_SIDE} px).")
    mask_png: str = Field(description="Base64 PNG: the lesion segmentation outlined over the image (same size).")


class ModelResponse(_Open):
    bundle: dict[str, Any] = Field(description="name, id (sha256 of bundle.json), members, engine.")
    mc_samples: int = Field(description="MC-dropout passes per prediction (0: no uncertainty).")
    meta: dict[str, Any] = Field(description="bundle.json without server file paths.")
    notice: str


class HealthResponse(_Open):
    status: str
    bundle_id: str
    bundle_name: str | None
    engine: str
    uptime_s: float
    requests: dict[str, int] = Field(description="predict, explain (served), rejected (4xx), errors (5xx).")
    api_key_required: bool
    limits: dict[str, int]
    version: str
    notice: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "No API key (X-API-Key) although the service requires one."),
        (403, "Unknown API key."),
        (413, "File or request too large (too_large), or too many pixels (too_many_pixels)."),
        (415, "Not an image (not_an_image) or not 8-bit RGB (unsupported_mode)."),
        (422, "empty, too_small, truncated, missing_file, invalid_request, invalid_metadata or metadata_unsupported_by_engine."),
        (500, "Internal error (logged with the request id)."),
    )
}


# -- helpers ------------------------------------------------------------------------------------
def reject(status: int, reason: str, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail={"reason": reason, "message": message})


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, {"reason": "too_large", "message": f"the request body is over the limit of {limit:,} bytes"})


class BodyCap:
    """ASGI middleware: 413 for POST bodies over ``max_bytes`` (by Content-Length, else while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        declared_too_large = length.isdigit() and int(length) > self.max_bytes
        seen, started = 0, False

        async def capped_receive() -> Message:
            nonlocal seen
            if declared_too_large:  # refused before a byte of the body is read
                raise _BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)  # FastAPI re-raises HTTPExceptions from body parsing
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except _BodyTooLarge as e:  # raised outside FastAPI's handlers (they answer it otherwise)
            if started:
                raise
            if self.on_reject is not None:
                self.on_reject()
            await _json_error(e)(scope, receive, send)


def _json_error(exc: HTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, dict) else {
        "reason": _STATUS_REASON.get(exc.status_code, "http_error"), "message": str(exc.detail)
    }
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def read_upload(file: UploadFile, cap: int) -> bytes:
    """The upload's bytes, read in chunks; 413 as soon as more than ``cap`` bytes have come."""
    parts, n = [], 0
    file.file.seek(0)
    while chunk := file.file.read(_CHUNK):
        n += len(chunk)
        if n > cap:
            raise reject(413, "too_large", f"the file is over the upload limit of {cap:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


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


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """bundle.json without server file paths (member folders, source checkpoints, data config)."""
    out = {k: v for k, v in meta.items() if k != "members"}
    out["members"] = [{k: v for k, v in m.items() if k not in ("dir", "source_checkpoint")} for m in meta["members"]]
    if isinstance(meta.get("provenance"), dict):
        out["provenance"] = {k: v for k, v in meta["provenance"].items() if k not in ("data_config", "checkpoint")}
    return out


class _Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts = {"predict": 0, "explain": 0, "rejected": 0, "errors": 0}
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1


# -- the app ------------------------------------------------------------------------------------
def _swagger_ui_dir() -> Path:
    """Swagger UI 5 (OpenAPI 3.1, as FastAPI writes) shipped by the fastapi-offline package."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def create_app(
    predictor: Predictor,
    *,
    audit: AuditLog | None,
    api_keys: Collection[str] = (),
    limits: ImageLimits = ImageLimits(),  # noqa: B008 - frozen dataclass
    max_upload_bytes: int | None = None,
) -> FastAPI:
    """The service around a loaded ``predictor``: see the module docstring for routes and codes.

    ``api_keys``: accepted ``X-API-Key`` values (empty: no key needed). ``max_upload_bytes``: the
    file cap (default ``limits.max_bytes``); the request body may exceed it by :data:`MULTIPART_OVERHEAD`.
    """
    from skinlesion.delivery.audit import api_key_id

    keys = tuple(k for k in api_keys if k)
    cap = int(max_upload_bytes if max_upload_bytes is not None else limits.max_bytes)
    if cap < 1:
        raise ValueError(f"The 'max_upload_bytes' parameter must be a positive integer. Got {max_upload_bytes!r} instead.")
    stats = _Stats()
    info = predictor.bundle_info()
    app = FastAPI(
        title="skinlesion",
        version=skinlesion.__version__,
        description=f"Dermoscopic skin-lesion classification service. **{NOTICE}**",
        docs_url=None,  # served below from the packaged Swagger UI: no CDN, works offline
        redoc_url=None,
    )
    app.add_middleware(BodyCap, max_bytes=cap + MULTIPART_OVERHEAD, on_reject=lambda: stats.add("rejected"))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-static", StaticFiles(directory=str(_swagger_ui_dir())), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="skinlesion API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="data:,",
        )
    key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when the service was started with API keys.")

    def user(key: str | None = Security(key_header)) -> str:
        if not keys:
            return "anonymous"
        if not key:
            raise reject(401, "api_key_missing", f"this service needs an API key in the {API_KEY_HEADER} header")
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
            raise reject(403, "api_key_invalid", "the API key is not one this service accepts")
        return api_key_id(key)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        stats.add("errors" if exc.status_code >= 500 else "rejected")
        response = _json_error(exc)
        log.info("%s %s -> %s %s", request.method, request.url.path, exc.status_code, response.body[:300].decode(errors="replace"))
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]
        no_file = any(list(e["loc"] or [])[-1:] == ["file"] for e in errors)
        reason = "missing_file" if no_file else "invalid_request"
        message = (
            "no image in form field 'file' (send multipart/form-data with file=@IMAGE)" if no_file
            else "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        )
        return await _http_error(request, HTTPException(422, {"reason": reason, "message": message, "errors": errors}))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        stats.add("errors")
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": {"reason": "internal_error", "message": "internal error; see the server log"}}, status_code=500)

    def accept(file: UploadFile) -> tuple[bytes, np.ndarray, dict[str, Any]]:
        data = read_upload(file, cap)
        try:
            image = decode_image(data, source="upload", limits=limits)
        except ImageRejected as e:
            raise reject(REJECTION_STATUS.get(e.reason, 422), e.reason, f"the file {e.detail}") from None
        h, w = image.shape[:2]
        return data, image, {"name": file.filename, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "width": w, "height": h}

    def patient(
        age: str | None = Form(None, description=AGE_HELP),
        sex: str | None = Form(None, description=SEX_HELP),
        site: str | None = Form(None, description=SITE_HELP),
    ) -> dict[str, Any] | None:
        """The form's metadata (a dependency of /predict and /explain), normalised (None: none given);
        422 before any model runs."""
        try:
            record = normalise_metadata({"age": age, "sex": sex, "site": site}, "the form")
        except MetadataError as e:
            raise reject(422, e.reason, str(e)) from None
        if record is not None and not predictor.accepts_metadata:
            raise reject(
                422, "metadata_unsupported_by_engine",
                f"the {info['engine']} engine runs image-only graphs, but this bundle's members use patient metadata: "
                "send the image without age, sex and site, or run the service with --engine torch",
            )
        return record

    def run_model(request_id: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception:
            log.exception("request %s: the model failed", request_id)
            raise reject(500, "internal_error", f"the model failed on this image (request {request_id}); see the server log") from None

    def finish(kind: str, request_id: str, user_id: str, data: bytes, meta: dict[str, Any], record: dict[str, Any],
               started: float, response: Response) -> dict[str, Any]:
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        audit_id = audit_error = None
        if audit is not None:
            try:
                audit_id = audit.record(source="serve", input_sha256=meta["sha256"], input_name=meta["name"], record=record,
                                        user_id=user_id, image_bytes=data, request_id=request_id, elapsed_ms=elapsed)
            except Exception as e:  # noqa: BLE001 - the result must not be lost to an audit failure
                log.exception("request %s: the audit write failed; the result is returned without an audit row", request_id)
                audit_error = f"the audit log could not be written ({e})"
        stats.add(kind)
        review = ((record.get("uncertainty") or {}).get("review") or {}).get("flag")
        log.info("%s %s: %s, review %s, %.0f ms, sha256 %s", kind, request_id, record["prediction"]["decision"], review, elapsed, meta["sha256"][:12])
        response.headers["X-Request-ID"] = request_id
        return {"request_id": request_id, "input": meta, **record, "elapsed_ms": elapsed, "audit_id": audit_id, "audit_error": audit_error}

    @app.get("/health", response_model=HealthResponse, tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness and what is loaded (no API key needed)."""
        return {
            "status": "ok", "bundle_id": info["id"], "bundle_name": info["name"], "engine": info["engine"],
            "uptime_s": round(time.monotonic() - stats.started, 1), "requests": dict(stats.counts),
            "api_key_required": bool(keys), "limits": {"max_upload_bytes": cap, "max_pixels": limits.max_pixels, "min_side": limits.min_side},
            "version": skinlesion.__version__, "notice": NOTICE,
        }

    @app.get("/model", response_model=ModelResponse, tags=["service"], responses={k: v for k, v in _ERRORS.items() if k in (401, 403)})
    def model(_: str = Depends(user)) -> dict[str, Any]:
        """The bundle's metadata: classes, members, TTA, temperature, thresholds (and how each was chosen), review flag, provenance."""
        return {"bundle": {k: v for k, v in info.items() if k != "path"}, "mc_samples": predictor.mc_samples,
                "meta": public_meta(predictor.bundle.meta), "notice": NOTICE}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True, responses=_ERRORS,
              tags=["prediction"])
    def predict(
        response: Response,
        file: UploadFile = File(..., description="A dermoscopic image: 8-bit RGB JPEG/PNG/TIFF/BMP/WebP."),
        user_id: str = Depends(user),
        record_in: dict[str, Any] | None = Depends(patient),
    ) -> dict[str, Any]:
        """Probabilities, the decision and the threshold that made it, MC-dropout uncertainty and the review flag."""
        started, request_id = time.perf_counter(), uuid.uuid4().hex
        data, image, meta = accept(file)
        if record_in is None:
            record = run_model(request_id, predictor.predict, [image])[0]
        else:
            record = run_model(request_id, predictor.predict, [image], metadata=[record_in])[0]
        return finish("predict", request_id, user_id, data, meta, record, started, response)

    @app.post("/explain", response_model=ExplainResponse, response_model_exclude_unset=True, responses=_ERRORS,
              tags=["prediction"])
    def explain(
        response: Response,
        file: UploadFile = File(..., description="A dermoscopic image: 8-bit RGB JPEG/PNG/TIFF/BMP/WebP."),
        pixel_spacing_mm: float | None = Form(None, gt=0, allow_inf_nan=False, description="mm per pixel; without it ABCDE sizes stay in pixels."),
        user_id: str = Depends(user),
        record_in: dict[str, Any] | None = Depends(patient),
    ) -> dict[str, Any]:
        """/predict plus the Grad-CAM++ overlay, the segmentation outline, ABCDE and the Total Dermoscopy Score."""
        started, request_id = time.perf_counter(), uuid.uuid4().hex
        data, image, meta = accept(file)

        def work() -> tuple[dict[str, Any], dict[str, str]]:
            from skinlesion.explain.cam import overlay_array

            if record_in is None:
                result, arrays = predictor.explain(image, pixel_spacing_mm=pixel_spacing_mm)
            else:
                result, arrays = predictor.explain(image, pixel_spacing_mm=pixel_spacing_mm, metadata=record_in)
            pngs = {"cam_png": _png_b64(overlay_array(image, arrays["cam"])), "mask_png": _png_b64(outline(image, arrays["mask"]))}
            return result, pngs

        result, pngs = run_model(request_id, work)
        return {**finish("explain", request_id, user_id, data, meta, result, started, response), **pngs}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(
            (STATIC_DIR / "index.html").read_text(encoding="utf-8"),
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return app
