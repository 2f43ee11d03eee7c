"""Response models of the service (documented in ``/openapi.json``).

``/predict`` answers a :class:`~skinlesion.records.PredictionRecord` and ``/explain`` an
:class:`~skinlesion.records.Explanation`, each with the request's fields around it: the request id
and the upload first, the time taken and the audit row after. The record's fields and their
descriptions come from :mod:`skinlesion.records.schema`: a field added there is answered and
documented here without a change.
"""

# No ``from __future__ import annotations``: TypedDict reads NotRequired[...] at class creation.
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

from skinlesion.delivery.service.settings import PNG_MAX_SIDE
from skinlesion.records import Explanation, PredictionRecord


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    reason: str = Field(description="Stable code: api_key_missing, too_large, not_an_image, unsupported_mode, ...")
    message: str = Field(description="What was wrong, in words.")


class ErrorResponse(BaseModel):
    detail: ErrorDetail


class InputInfo(TypedDict):
    name: Annotated[str | None, Field(description="The uploaded file name (as the client sent it).")]
    sha256: Annotated[str, Field(description="sha256 of the uploaded bytes (also in the audit log).")]
    bytes: int
    width: int
    height: int


class _Request(TypedDict):
    request_id: str
    input: InputInfo


class _Served(TypedDict):
    elapsed_ms: float
    audit_id: Annotated[int | None, Field(description="Row id in the audit log; None when not written.")]
    audit_error: Annotated[str | None, Field(description="Set when the audit write failed (the result is still valid).")]


class PredictResponse(_Request, PredictionRecord, _Served):
    """The prediction record of the upload, with the request's fields around it."""


class ExplainResponse(PredictResponse, Explanation):
    """The explanation of the upload, with the request's fields around it and the overlays as PNG."""

    input: InputInfo
    cam_png: Annotated[str, Field(description=f"Base64 PNG: the CAM over the image (longer side at most {PNG_MAX_SIDE} px).")]
    mask_png: Annotated[str, Field(description="Base64 PNG: the lesion segmentation outlined over the image (same size).")]


class ModelResponse(_Open):
    bundle: dict[str, Any] = Field(description="name, id (sha256 of bundle.json), members, engine.")
    mc_samples: int = Field(description="MC-dropout passes per prediction (0: no uncertainty).")
    meta: dict[str, Any] = Field(description="bundle.json without server file paths.")
    notice: str


class HealthResponse(_Open):
    """Liveness. When the service has API keys, the model, version, uptime and request counts are
    answered only to a request with a valid key."""

    status: str
    api_key_required: bool
    limits: dict[str, int]
    notice: str
    bundle_id: str | None = None
    bundle_name: str | None = None
    engine: str | None = None
    uptime_s: float | None = None
    requests: dict[str, int] | None = Field(
        None, description="predict, explain, compare (served), rejected (4xx), busy (503: the service was full), errors (5xx)."
    )
    version: str | None = None
