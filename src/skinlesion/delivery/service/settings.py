"""The settings of one service: accepted API keys, image limits, the upload cap and the bounds on work."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from skinlesion.delivery.images import ImageLimits

API_KEY_HEADER = "X-API-Key"
#: Room for multipart headers and form fields on top of the file cap (the request-body cap).
MULTIPART_OVERHEAD = 64 * 1024
#: The overlay PNGs in ``/explain`` are scaled down to this longer side (the ABCDE run at full size).
PNG_MAX_SIDE = 1024
#: Longest accepted value of a free-text form field (age, sex, site) and of an upload's file name.
MAX_FIELD_CHARS = 64
MAX_NAME_CHARS = 255


@dataclass(frozen=True)
class ServiceSettings:
    """``api_keys``: accepted ``X-API-Key`` values (empty: no key needed); ``limits``: what an image
    may be; ``max_upload_bytes``: the file cap (the request body may exceed it by
    :data:`MULTIPART_OVERHEAD`)."""

    api_keys: tuple[str, ...] = ()
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_upload_bytes: int = ImageLimits().max_bytes
    #: /predict and /explain requests admitted at once (receiving, waiting, decoding, predicting); more: 503.
    max_in_flight: int = 8
    #: Admitted requests that decode and predict at once (each may hold a full-size decode); the others wait.
    max_active: int = 2
    #: Seconds from arrival within which a request must be received and get to work; else 408 / 503.
    request_timeout_s: float = 60.0

    @classmethod
    def of(
        cls, api_keys: Collection[str] = (), limits: ImageLimits | None = None, max_upload_bytes: int | None = None, *,
        max_in_flight: int | None = None, max_active: int | None = None, request_timeout_s: float | None = None,
    ) -> ServiceSettings:
        """Settings from the arguments of :func:`~skinlesion.delivery.service.create_app`: empty keys
        dropped, the file cap ``limits.max_bytes`` unless given, the class defaults for bounds not given."""
        limits = limits or ImageLimits()
        cap = int(max_upload_bytes if max_upload_bytes is not None else limits.max_bytes)
        if cap < 1:
            raise ValueError(f"The 'max_upload_bytes' parameter must be a positive integer. Got {max_upload_bytes!r} instead.")
        bounds: dict[str, Any] = {}
        for name, value in (("max_in_flight", max_in_flight), ("max_active", max_active)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"The '{name}' parameter must be a positive integer. Got {value!r} instead.")
                bounds[name] = value
        if request_timeout_s is not None:
            if isinstance(request_timeout_s, bool) or not isinstance(request_timeout_s, int | float) or not 0 < request_timeout_s < math.inf:
                raise ValueError(f"The 'request_timeout_s' parameter must be a number > 0. Got {request_timeout_s!r} instead.")
            bounds["request_timeout_s"] = float(request_timeout_s)
        settings = cls(tuple(k for k in api_keys if k), limits, cap, **bounds)
        if settings.max_active > settings.max_in_flight:
            raise ValueError(
                f"The 'max_active' parameter ({settings.max_active}) must be at most 'max_in_flight' ({settings.max_in_flight})."
            )
        return settings

    @property
    def max_body_bytes(self) -> int:
        """The cap of a whole request body: the file cap plus :data:`MULTIPART_OVERHEAD`."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD

    @property
    def body_caps(self) -> dict[str, int]:
        """Paths whose body cap differs: ``/compare`` takes two files, each checked against the file cap."""
        return {"/compare": 2 * self.max_upload_bytes + MULTIPART_OVERHEAD}
