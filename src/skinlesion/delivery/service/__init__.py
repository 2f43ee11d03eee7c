"""``skinlesion serve``: a REST service and a web page over one loaded decision bundle (FastAPI).

=================  ====  =============================================================================
route              key   answers
=================  ====  =============================================================================
``GET /health``    no    200: status, upload limits; with API keys, bundle id, engine, version, uptime
                         and request counts only for a valid key
``GET /model``     yes   200: bundle metadata (classes, members, TTA, temperature, thresholds and how
                         each was chosen, review flag, provenance); no server file paths
``POST /predict``  yes   200: the prediction record: probabilities, decision, what decided it,
                         uncertainty, review flag
``POST /explain``  yes   200: the same plus Grad-CAM++ overlay and segmentation outline (base64 PNG),
                         attention, ABCDE and Total Dermoscopy Score
``POST /compare``  yes   200: two visits of one lesion (files ``before``, ``after``): registration,
                         both segmentations, ABCDE change, model change, significant change or not
``GET /``          no    the web page (``delivery/static/``: offline, no external resources)
``/docs``          no    OpenAPI (``/openapi.json``; Swagger UI served from the package, offline)
=================  ====  =============================================================================

Uploads are multipart form field ``file`` with optional patient metadata fields ``age``, ``sex`` and
``site`` (used by metadata fusion members; absent or empty = missing; the result's ``metadata``
says what was used; each at most 64 characters, the file name at most 255) (``/explain`` also
takes ``pixel_spacing_mm``). CMYK, transparent, palette, grayscale and 16-bit images are converted
to 8-bit RGB and the EXIF orientation applied; the result's ``converted_from`` says what was done
(:mod:`skinlesion.delivery.images`). Every rejection is a 4xx JSON body
``{"detail": {"reason": CODE, "message": TEXT}}`` and the service stays up: 401 ``api_key_missing``
and 403 ``api_key_invalid`` (from the headers, before the body is read), 408 ``request_timeout``
(the body did not arrive in time), 413 ``too_large`` (request body or file over the cap, a
/compare body over twice the file cap: stopped
while streaming, before the rest is read) and ``too_many_pixels`` (from the image header, before
decoding), 415 ``not_an_image`` (also a format not in :data:`~skinlesion.delivery.images.FORMATS`)
and ``unsupported_mode`` (NaN or infinite float samples, integers beyond 16 bits), 422 ``empty``, ``too_small``,
``truncated``, ``missing_file``, ``invalid_request`` (also a field or name over its length),
``invalid_metadata`` (e.g. age ``abc``, sex ``x``) and ``metadata_unsupported_by_engine``
(metadata for fusion members on the ONNX engine); 404/405 for unknown routes; 503 ``busy`` with
``Retry-After`` when the service is full; 500 ``internal_error`` (logged with the request id; the
next request is served normally). The content type a client declares is not trusted: the bytes
are decoded and checked.

Bounded work (:mod:`~skinlesion.delivery.service.guards`): at most ``max_in_flight`` (8) /predict,
/explain and /compare requests are taken at once, of which ``max_active`` (2) decode and predict at once
(each may hold a full-size image); a request's body must arrive, and it must get a work slot,
within ``request_timeout_s`` (60 s) of its arrival. Every answer forbids framing
(``X-Frame-Options: DENY``, ``frame-ancestors 'none'``); prediction answers are ``no-store``.

The model is loaded once (a :class:`~skinlesion.delivery.engine.Predictor`). Endpoints are plain
``def`` functions, so FastAPI runs them in its thread pool; uploads are decoded in parallel and
:attr:`Predictor.lock` serialises model use (MC dropout and Grad-CAM hooks change module state).
The responses of ``/predict`` and ``/explain`` are the :class:`~skinlesion.records.PredictionRecord`
and :class:`~skinlesion.records.Explanation` with the request's fields around them
(:mod:`~skinlesion.delivery.service.schemas`).

Every successful prediction is written to the :class:`~skinlesion.delivery.audit.AuditLog` with
``source="serve"`` and the user id (:func:`~skinlesion.delivery.audit.api_key_id`, or
``anonymous``); image bytes only when the log was opened with ``store_images=True``. If the audit
write fails the result is still returned, with ``audit_error`` set to a fixed message with the
request id (the database's own error, which may name tables, parameters or paths, goes only to
the server log).

Modules: :mod:`~skinlesion.delivery.service.app` builds the app from
:class:`~skinlesion.delivery.service.settings.ServiceSettings`; the routes are in
:mod:`~skinlesion.delivery.service.routes`, their dependencies (API key, form metadata, upload) in
:mod:`~skinlesion.delivery.service.deps`, errors and the body cap in
:mod:`~skinlesion.delivery.service.errors`, the guards in front of the routes in
:mod:`~skinlesion.delivery.service.guards`.
"""

from skinlesion.delivery.service.app import create_app
from skinlesion.delivery.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
