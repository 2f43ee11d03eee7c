"""What the prediction routes take from a request: the user (API key), the patient metadata of the
form and the uploaded image, each checked before any model runs."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import Depends, Form, Security, UploadFile
from fastapi.security import APIKeyHeader

from skinlesion.delivery.audit import api_key_id
from skinlesion.delivery.images import DecodedImage, ImageRejected, load_image
from skinlesion.delivery.metadata import HAM10000_SITES
from skinlesion.delivery.service.context import ServiceContext, get_context
from skinlesion.delivery.service.errors import REJECTION_STATUS, reject
from skinlesion.delivery.service.guards import key_error
from skinlesion.delivery.service.schemas import InputInfo
from skinlesion.delivery.service.settings import API_KEY_HEADER, MAX_FIELD_CHARS, MAX_NAME_CHARS
from skinlesion.records.metadata import MetadataError, normalise_metadata

_CHUNK = 1024 * 1024
AGE_HELP = "Patient age in years, 0 to 120 (optional metadata; empty or absent: unknown)."
SEX_HELP = "male or female (optional metadata; empty, absent or 'unknown': unknown)."
SITE_HELP = f"Anatomical site, as HAM10000 names it: {', '.join(HAM10000_SITES)} (optional; empty or absent: unknown)."

key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when the service was started with API keys.")


def user(key: str | None = Security(key_header), ctx: ServiceContext = Depends(get_context)) -> str:
    """The caller's id: ``anonymous`` without API keys, else the key's id; 401/403 otherwise (already
    answered by :class:`~skinlesion.delivery.service.guards.KeyGate` before the body was read)."""
    error = key_error(key, ctx.settings.api_keys)
    if error is not None:
        raise error
    return api_key_id(key) if ctx.settings.api_keys and key else "anonymous"


def patient(
    age: str | None = Form(None, max_length=MAX_FIELD_CHARS, description=AGE_HELP),
    sex: str | None = Form(None, max_length=MAX_FIELD_CHARS, description=SEX_HELP),
    site: str | None = Form(None, max_length=MAX_FIELD_CHARS, description=SITE_HELP),
    ctx: ServiceContext = Depends(get_context),
) -> dict[str, Any] | None:
    """The form's metadata (a dependency of /predict and /explain), normalised (None: none given);
    422 before any model runs."""
    try:
        record = normalise_metadata({"age": age, "sex": sex, "site": site}, "the form")
    except MetadataError as e:
        raise reject(422, e.reason, str(e)) from None
    if record is not None and not ctx.predictor.accepts_metadata:
        raise reject(
            422, "metadata_unsupported_by_engine",
            f"the {ctx.info['engine']} engine runs image-only graphs, but this bundle's members use patient metadata: "
            "send the image without age, sex and site, or run the service with --engine torch",
        )
    return record


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


def accept_image(file: UploadFile, ctx: ServiceContext) -> tuple[bytes, DecodedImage, InputInfo]:
    """The upload's bytes, its checked RGB image (with what was converted) and what the response says
    about it (``input``)."""
    if file.filename is not None and len(file.filename) > MAX_NAME_CHARS:
        raise reject(422, "invalid_request", f"the file name is {len(file.filename):,} characters; the limit is {MAX_NAME_CHARS}")
    data = read_upload(file, ctx.settings.max_upload_bytes)
    try:
        decoded = load_image(data, source="upload", limits=ctx.settings.limits)
    except ImageRejected as e:
        raise reject(REJECTION_STATUS.get(e.reason, 422), e.reason, f"the file {e.detail}") from None
    h, w = decoded.array.shape[:2]
    return data, decoded, InputInfo(name=file.filename, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), width=w, height=h)
