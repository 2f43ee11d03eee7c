"""``GET /health``, ``GET /model``, ``/docs`` (the packaged Swagger UI) and the web page at ``/``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

import skinlesion
from skinlesion.delivery.service.context import ServiceContext, get_context
from skinlesion.delivery.service.deps import user
from skinlesion.delivery.service.errors import ERRORS
from skinlesion.delivery.service.guards import key_error
from skinlesion.delivery.service.schemas import HealthResponse, ModelResponse
from skinlesion.delivery.service.settings import API_KEY_HEADER
from skinlesion.records import NOTICE

#: The web page: offline, no external resources.
STATIC_DIR = Path(__file__).parents[2] / "static"
#: The Swagger UI files, mounted by :func:`~skinlesion.delivery.service.create_app`.
DOCS_STATIC = "/docs-static"
router = APIRouter(tags=["service"])


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title="skinlesion API",
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url="data:,",
    )


@router.get("/health", response_model=HealthResponse, response_model_exclude_unset=True)
def health(request: Request, ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """Liveness and the upload limits (no API key needed); with API keys, what is loaded and the
    request counts only for a valid key in X-API-Key."""
    info, settings, limits = ctx.info, ctx.settings, ctx.settings.limits
    answer: dict[str, Any] = {
        "status": "ok", "api_key_required": bool(settings.api_keys),
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": limits.max_pixels, "min_side": limits.min_side},
        "notice": NOTICE,
    }
    if key_error(request.headers.get(API_KEY_HEADER), settings.api_keys) is not None:
        return answer
    return {
        **answer, "bundle_id": info["id"], "bundle_name": info["name"], "engine": info["engine"],
        "uptime_s": round(time.monotonic() - ctx.stats.started, 1), "requests": dict(ctx.stats.counts),
        "version": skinlesion.__version__,
    }


@router.get("/model", response_model=ModelResponse, responses={k: v for k, v in ERRORS.items() if k in (401, 403)})
def model(_: str = Depends(user), ctx: ServiceContext = Depends(get_context)) -> dict[str, Any]:
    """The bundle's metadata: classes, members, TTA, temperature, thresholds (and how each was chosen), review flag, provenance."""
    return {"bundle": {k: v for k, v in ctx.info.items() if k != "path"}, "mc_samples": ctx.predictor.mc_samples,
            "meta": public_meta(ctx.predictor.bundle.meta), "notice": NOTICE}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(
        (STATIC_DIR / "index.html").read_text(encoding="utf-8"),
        headers={
            "Content-Security-Policy": (
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; object-src 'none'; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
            ),
            "X-Content-Type-Options": "nosniff",
        },
    )


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """bundle.json without server file paths (member folders, source checkpoints, data config)."""
    out = {k: v for k, v in meta.items() if k != "members"}
    out["members"] = [{k: v for k, v in m.items() if k not in ("dir", "source_checkpoint")} for m in meta["members"]]
    if isinstance(meta.get("provenance"), dict):
        out["provenance"] = {k: v for k, v in meta["provenance"].items() if k not in ("data_config", "checkpoint")}
    return out
