"""The settings of one service: accepted API keys, image limits and the upload cap."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from skinlesion.delivery.images import ImageLimits

API_KEY_HEADER = "X-API-Key"
#: Room for multipart headers and form fields on top of the file cap (the request-body cap).
MULTIPART_OVERHEAD = 64 * 1024
#: The overlay PNGs in ``/explain`` are scaled down to this longer side (the ABCDE run at full size).
PNG_MAX_SIDE = 1024


@dataclass(frozen=True)
class ServiceSettings:
    """``api_keys``: accepted ``X-API-Key`` values (empty: no key needed); ``limits``: what an image
    may be; ``max_upload_bytes``: the file cap (the request body may exceed it by
    :data:`MULTIPART_OVERHEAD`)."""

    api_keys: tuple[str, ...] = ()
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_upload_bytes: int = ImageLimits().max_bytes

    @classmethod
    def of(
        cls, api_keys: Collection[str] = (), limits: ImageLimits | None = None, max_upload_bytes: int | None = None
    ) -> ServiceSettings:
        """Settings from the arguments of :func:`~skinlesion.delivery.service.create_app`: empty keys
        dropped, the file cap ``limits.max_bytes`` unless given."""
        limits = limits or ImageLimits()
        cap = int(max_upload_bytes if max_upload_bytes is not None else limits.max_bytes)
        if cap < 1:
            raise ValueError(f"The 'max_upload_bytes' parameter must be a positive integer. Got {max_upload_bytes!r} instead.")
        return cls(tuple(k for k in api_keys if k), limits, cap)

    @property
    def max_body_bytes(self) -> int:
        """The cap of a whole request body: twice the file cap (``/compare`` takes two files, each
        checked against the file cap) plus :data:`MULTIPART_OVERHEAD`."""
        return 2 * self.max_upload_bytes + MULTIPART_OVERHEAD
