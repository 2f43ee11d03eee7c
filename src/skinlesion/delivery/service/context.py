"""What the routes share: the loaded predictor, the audit log, the settings and request counts.

:func:`create_app` puts one :class:`ServiceContext` on ``app.state.context``; routes get it with
``Depends(get_context)``.
"""

from __future__ import annotations

import math
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
    """Requests served (``predict``, ``explain``, ``compare``), rejected (4xx), turned away because the service was
    full (``busy``: 503) and failed (5xx, ``errors``), the start time, and the mean seconds a served
    request held its work slot (an exponential moving average, for ``Retry-After``)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counts = {"predict": 0, "explain": 0, "compare": 0, "rejected": 0, "busy": 0, "errors": 0}
        self.work_s = 1.0
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def served(self, kind: str, work_seconds: float) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.work_s = 0.8 * self.work_s + 0.2 * work_seconds

    def retry_after(self, waiting: int, slots: int) -> int:
        """Seconds until about ``waiting`` requests have gone through ``slots`` work slots (1 to 60)."""
        return int(min(60, max(1, math.ceil(self.work_s * waiting / slots))))


@dataclass
class ServiceContext:
    """``work``: the :attr:`~ServiceSettings.max_active` slots in which requests decode and predict."""

    predictor: Predictor
    audit: AuditLog | None
    settings: ServiceSettings
    info: BundleRef
    stats: RequestStats = field(default_factory=RequestStats)
    work: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.work = threading.BoundedSemaphore(self.settings.max_active)


def get_context(request: Request) -> ServiceContext:
    """The app's :class:`ServiceContext` (a route dependency)."""
    return request.app.state.context  # type: ignore[no-any-return]
