"""What stands in front of the routes (ASGI middleware), each acting before a byte of the body is read.

* :class:`SecurityHeaders`: every answer says it must not be framed (``X-Frame-Options: DENY``,
  ``frame-ancestors 'none'``) nor sniffed, and prediction answers must not be cached.
* :class:`KeyGate`: with API keys, ``/predict``, ``/explain``, ``/compare`` and ``/model`` without a valid
  ``X-API-Key`` are answered 401/403 from the headers alone (the upload is never read).
* :class:`WorkGate`: at most ``max_in_flight`` ``/predict``, ``/explain`` and ``/compare`` requests are admitted at
  once (more: 503 with ``Retry-After``), each with a deadline (``request_timeout_s`` from arrival,
  in ``request.state.deadline``): its body must have arrived by then
  (:class:`~skinlesion.delivery.service.errors.BodyCap`: else 408), and the route waits at most until
  then for one of ``max_active`` work slots (:attr:`ServiceContext.work`; else 503) before it
  decodes and predicts.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Collection

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from skinlesion.delivery.service.errors import json_error, reject
from skinlesion.delivery.service.settings import API_KEY_HEADER

#: Routes (method, path) that need the API key (when the service has keys).
KEYED_ROUTES = frozenset({("POST", "/predict"), ("POST", "/explain"), ("POST", "/compare"), ("GET", "/model"), ("HEAD", "/model")})
#: Routes whose requests hold a decode and a model run.
WORK_PATHS = frozenset({"/predict", "/explain", "/compare"})
_HEADERS = ((b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))


def key_error(key: str | None, keys: Collection[str]) -> HTTPException | None:
    """The 401/403 answer to ``key`` (constant-time comparison), or None when it is accepted or no key is needed."""
    if not keys:
        return None
    if not key:
        return reject(401, "api_key_missing", f"this service needs an API key in the {API_KEY_HEADER} header")
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        return reject(403, "api_key_invalid", "the API key is not one this service accepts")
    return None


def busy(retry_after_s: int, why: str) -> HTTPException:
    """A 503 ``busy`` answer with ``Retry-After``."""
    e = reject(503, "busy", f"{why}; try again in {retry_after_s} s")
    e.headers = {"Retry-After": str(retry_after_s)}
    return e


class SecurityHeaders:
    """Adds ``X-Frame-Options``, ``X-Content-Type-Options``, ``Referrer-Policy``, a ``frame-ancestors``
    CSP (when the answer sets no CSP of its own) and, on prediction routes, ``Cache-Control: no-store``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(_HEADERS) + ([(b"cache-control", b"no-store")] if scope["path"] in WORK_PATHS else [])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", b"frame-ancestors 'none'"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class KeyGate:
    """401/403 for :data:`KEYED_ROUTES` without a valid key, decided from the headers (see the module doc)."""

    def __init__(self, app: ASGIApp, keys: Collection[str], on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.keys = tuple(keys)
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and (scope["method"], scope["path"]) in KEYED_ROUTES:
            error = key_error(Headers(scope=scope).get(API_KEY_HEADER), self.keys)
            if error is not None:
                if self.on_reject is not None:
                    self.on_reject()
                await json_error(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class WorkGate:
    """Admission of :data:`WORK_PATHS` requests and their deadline (see the module doc).

    ``retry_after(waiting)`` gives the seconds a 503 tells the client to wait; ``on_busy`` is called per 503.
    """

    def __init__(
        self, app: ASGIApp, max_in_flight: int, timeout_s: float, retry_after: Callable[[int], int],
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.retry_after = retry_after
        self.on_busy = on_busy
        self.in_flight = 0  # only touched on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in WORK_PATHS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            if self.on_busy is not None:
                self.on_busy()
            why = f"{self.in_flight} requests are in progress, the most this service takes at once"
            await json_error(busy(self.retry_after(self.in_flight), why))(scope, receive, send)
            return
        scope.setdefault("state", {})["deadline"] = time.monotonic() + self.timeout_s  # for BodyCap and the route
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
