"""Build the service: settings, shared context, guards (headers, key, work bound, body cap), error
answers, static files and routes."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import skinlesion
from skinlesion.delivery.images import ImageLimits
from skinlesion.delivery.service.context import ServiceContext
from skinlesion.delivery.service.errors import BodyCap, add_error_handlers
from skinlesion.delivery.service.guards import KeyGate, SecurityHeaders, WorkGate
from skinlesion.delivery.service.routes import compare, prediction, service
from skinlesion.delivery.service.settings import ServiceSettings
from skinlesion.records import NOTICE

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import Predictor


def create_app(
    predictor: Predictor,
    *,
    audit: AuditLog | None,
    api_keys: Collection[str] = (),
    limits: ImageLimits = ImageLimits(),  # noqa: B008 - frozen dataclass
    max_upload_bytes: int | None = None,
    max_in_flight: int | None = None,
    max_active: int | None = None,
    request_timeout_s: float | None = None,
) -> FastAPI:
    """The service around a loaded ``predictor``: see :mod:`skinlesion.delivery.service` for routes and codes.

    ``api_keys``: accepted ``X-API-Key`` values (empty: no key needed). ``max_upload_bytes``: the
    file cap (default ``limits.max_bytes``); the request body may exceed it by
    :data:`~skinlesion.delivery.service.settings.MULTIPART_OVERHEAD`. ``max_in_flight``,
    ``max_active``, ``request_timeout_s``: the bounds on work (:class:`ServiceSettings`; None: default).
    """
    settings = ServiceSettings.of(
        api_keys, limits, max_upload_bytes, max_in_flight=max_in_flight, max_active=max_active, request_timeout_s=request_timeout_s,
    )
    context = ServiceContext(predictor, audit, settings, predictor.bundle_info())
    app = FastAPI(
        title="skinlesion",
        version=skinlesion.__version__,
        description=f"Dermoscopic skin-lesion classification service. **{NOTICE}**",
        docs_url=None,  # served by routes.service from the packaged Swagger UI: no CDN, works offline
        redoc_url=None,
    )
    app.state.context = context
    # Outermost last: SecurityHeaders, KeyGate, WorkGate, BodyCap, then the routes.
    app.add_middleware(
        BodyCap, max_bytes=settings.max_body_bytes, per_path=settings.body_caps, on_reject=lambda: context.stats.add("rejected")
    )
    app.add_middleware(
        WorkGate, max_in_flight=settings.max_in_flight, timeout_s=settings.request_timeout_s,
        retry_after=lambda waiting: context.stats.retry_after(waiting, settings.max_active), on_busy=lambda: context.stats.add("busy"),
    )
    app.add_middleware(KeyGate, keys=settings.api_keys, on_reject=lambda: context.stats.add("rejected"))
    app.add_middleware(SecurityHeaders)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=service.STATIC_DIR), name="static")
    app.mount(service.DOCS_STATIC, StaticFiles(directory=str(_swagger_ui_dir())), name="docs-static")
    app.include_router(service.router)
    app.include_router(prediction.router)
    app.include_router(compare.router)
    return app


def _swagger_ui_dir() -> Path:
    """Swagger UI 5 (OpenAPI 3.1, as FastAPI writes) shipped by the fastapi-offline package."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"
