"""What the routes share: the loaded predictor, the audit log, the settings and request counts.

:func:`create_app` puts one :class:`ServiceContext` on ``app.state.context``; routes get it with
``Depends(get_context)``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from skinlesion.delivery.service.settings import ServiceSettings
from skinlesion.records import BundleRef

if TYPE_CHECKING:
    from skinlesion.delivery.audit import AuditLog
    from skinlesion.delivery.engine import Predictor


class RequestStats:
    """Requests served (``predict``, ``explain``, ``compare``), rejected (4xx) and failed (5xx), and the start time."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts = {"predict": 0, "explain": 0, "compare": 0, "rejected": 0, "errors": 0}
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1


@dataclass
class ServiceContext:
    predictor: Predictor
    audit: AuditLog | None
    settings: ServiceSettings
    info: BundleRef
    stats: RequestStats = field(default_factory=RequestStats)


def get_context(request: Request) -> ServiceContext:
    """The app's :class:`ServiceContext` (a route dependency)."""
    return request.app.state.context  # type: ignore[no-any-return]
