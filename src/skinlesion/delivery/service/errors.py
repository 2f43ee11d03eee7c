"""Errors of the service: every rejection is ``{"detail": {"reason": CODE, "message": TEXT}}``.

:func:`reject` makes one, :func:`add_error_handlers` answers every error (also FastAPI's own
validation errors and crashes) in that form and counts it, and :class:`BodyCap` refuses a request
body over the cap while it streams in, or one that has not arrived by the request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skinlesion.delivery.service.context import get_context
from skinlesion.delivery.service.schemas import ErrorResponse

log = logging.getLogger(__name__)

#: HTTP status of each :class:`~skinlesion.delivery.images.ImageRejected` reason.
REJECTION_STATUS = {
    "too_large": 413, "too_many_pixels": 413, "not_an_image": 415, "unsupported_mode": 415,
    "empty": 422, "too_small": 422, "truncated": 422, "missing": 422, "unreadable": 422,
}
_STATUS_REASON = {400: "bad_request", 401: "api_key_missing", 403: "api_key_invalid", 404: "not_found",
                  405: "method_not_allowed", 408: "request_timeout", 413: "too_large", 500: "internal_error", 503: "busy"}
#: The error answers of the prediction routes, for ``/openapi.json``.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "No API key (X-API-Key) although the service requires one (answered before the upload is read)."),
        (403, "Unknown API key (answered before the upload is read)."),
        (408, "The upload did not arrive within the request time limit (request_timeout)."),
        (413, "File or request too large (too_large), or too many pixels (too_many_pixels)."),
        (415, "Not an image in an accepted format (not_an_image), or samples without a defined 8-bit scale (unsupported_mode)."),
        (422, "empty, too_small, truncated, missing_file, invalid_request (e.g. a form field or file name over its length limit), "
              "invalid_metadata or metadata_unsupported_by_engine."),
        (500, "Internal error (logged with the request id)."),
        (503, "The service is full (busy): retry after the Retry-After seconds."),
    )
}


def reject(status: int, reason: str, message: str) -> HTTPException:
    """The error a route raises: answered as ``{"detail": {"reason": reason, "message": message}}``."""
    return HTTPException(status_code=status, detail={"reason": reason, "message": message})


class _BodyRefused(HTTPException):
    """Raised from ``receive`` by :class:`BodyCap`: the body is too large or late."""


def _too_large(limit: int) -> _BodyRefused:
    return _BodyRefused(413, {"reason": "too_large", "message": f"the request body is over the limit of {limit:,} bytes"})


def _too_late(seconds: float) -> _BodyRefused:
    return _BodyRefused(408, {"reason": "request_timeout", "message": f"the request body did not arrive within {seconds:g} s"})


class BodyCap:
    """ASGI middleware: 413 for POST bodies over ``max_bytes`` (``per_path[path]`` where given; by
    Content-Length, else while streaming),
    and 408 for a body that has not arrived by the request's deadline (``scope["state"]["deadline"]``,
    a :func:`time.monotonic` time set by :class:`~skinlesion.delivery.service.guards.WorkGate`)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, on_reject: Callable[[], None] | None = None, per_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_reject = on_reject
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope.get("path", ""), self.max_bytes)
        length = Headers(scope=scope).get("content-length", "")
        declared_too_large = length.isdigit() and int(length) > max_bytes
        deadline = scope.get("state", {}).get("deadline")
        seen, started, t0 = 0, False, time.monotonic()

        async def capped_receive() -> Message:
            nonlocal seen
            if declared_too_large:  # refused before a byte of the body is read
                raise _too_large(max_bytes)
            try:
                message = await (receive() if deadline is None else asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0)))
            except TimeoutError:
                raise _too_late(round(deadline - t0, 3)) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise _too_large(max_bytes)  # FastAPI re-raises HTTPExceptions from body parsing
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except _BodyRefused as e:  # raised outside FastAPI's handlers (they answer it otherwise)
            if started:
                raise
            if self.on_reject is not None:
                self.on_reject()
            await json_error(e)(scope, receive, send)


def json_error(exc: HTTPException) -> JSONResponse:
    """The JSON answer to ``exc``: its ``{"reason", "message"}`` detail, or one made from its status."""
    detail = exc.detail if isinstance(exc.detail, dict) else {
        "reason": _STATUS_REASON.get(exc.status_code, "http_error"), "message": str(exc.detail)
    }
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def add_error_handlers(app: FastAPI) -> None:
    """Answer HTTP errors, invalid requests and crashes as ``{"detail": {"reason", "message"}}``."""
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _crash)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code != 503:  # 503 busy is counted where it is decided
        get_context(request).stats.add("errors" if exc.status_code >= 500 else "rejected")
    response = json_error(exc)
    log.info("%s %s -> %s %s", request.method, request.url.path, exc.status_code, response.body[:300].decode(errors="replace"))
    return response


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in exc.errors()]
    no_file = any(list(e["loc"] or [])[-1:] == ["file"] for e in errors)
    reason = "missing_file" if no_file else "invalid_request"
    message = (
        "no image in form field 'file' (send multipart/form-data with file=@IMAGE)" if no_file
        else "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    )
    return await _http_error(request, HTTPException(422, {"reason": reason, "message": message, "errors": errors}))


async def _crash(request: Request, exc: Exception) -> JSONResponse:
    get_context(request).stats.add("errors")
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": {"reason": "internal_error", "message": "internal error; see the server log"}}, status_code=500)
