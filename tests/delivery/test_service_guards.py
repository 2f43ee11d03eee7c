"""The service under hostile or careless use: keys before bodies, bounded fields and work, no leaks,
no framing, valid images of any mode answered with what was converted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import TypeAdapter

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.audit import AuditLog
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.service import create_app
from skinlesion.delivery.service.errors import BodyCap
from skinlesion.delivery.service.guards import KeyGate, WorkGate
from skinlesion.delivery.service.settings import MAX_FIELD_CHARS, MAX_NAME_CHARS
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.records import PredictionRecord

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "guard-test-key"
AUTH = {"X-API-Key": KEY}


def _encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(calibrated_bundle: Path) -> Predictor:
    return Predictor(load_bundle(calibrated_bundle), mc_samples=2)


@pytest.fixture(scope="module")
def lesion_image() -> Image.Image:
    return Image.fromarray(generate_lesion("MEL", seed=3, hair=False, vignette=False)[0])


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, audit=None, api_keys=[KEY])) as c:
        yield c


def _files(data: bytes, name: str = "lesion.png") -> dict[str, Any]:
    return {"file": (name, data, "application/octet-stream")}


# -- valid images of other modes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "fmt", "step"),
    [("CMYK", "JPEG", "CMYK to RGB"), ("RGBA", "PNG", "alpha channel"), ("P", "GIF", "palette to RGB"), ("L", "PNG", "grayscale to RGB")],
)
def test_clinic_images_of_other_modes_are_answered_with_what_was_converted(
    predictor: Predictor, lesion_image: Image.Image, tmp_path: Path, mode: str, fmt: str, step: str
) -> None:
    audit = AuditLog(tmp_path / "audit.sqlite")
    data = _encode(lesion_image.convert(mode), fmt)
    with TestClient(create_app(predictor, audit=audit)) as c:
        r = c.post("/predict", files=_files(data, f"x.{fmt.lower()}"))
        plain = c.post("/predict", files=_files(_encode(lesion_image))).json()
    assert r.status_code == 200, r.text
    body = r.json()
    conv = body["converted_from"]
    assert conv["mode"] == mode and conv["format"] == fmt and any(step in s for s in conv["steps"])
    assert plain["converted_from"] is None  # an upright 8-bit RGB file: nothing converted
    record = {k: body[k] for k in PredictionRecord.__annotations__ if k in body}
    assert TypeAdapter(PredictionRecord).validate_python(record) == record  # a declared field
    stored = json.loads(audit.rows()[0]["outputs_json"])
    assert stored["converted_from"] == conv and stored["prediction"] == body["prediction"]


# -- keys, fields, leaks, framing ------------------------------------------------------------------------
def test_the_key_is_checked_before_a_byte_of_the_body_is_read() -> None:
    """At the ASGI level: an upload without a valid key is answered from its headers alone."""
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": bytes(64 * 1024), "more_body": True}

    async def greedy_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    for headers, status, reason in (([], 401, b"api_key_missing"), ([(b"x-api-key", b"nope")], 403, b"api_key_invalid")):
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)  # noqa: B023 - consumed within this iteration

        rejected: list[int] = []
        gate = KeyGate(greedy_app, keys=[KEY], on_reject=lambda: rejected.append(1))  # noqa: B023
        asyncio.run(gate({"type": "http", "method": "POST", "path": "/predict", "headers": headers}, receive, send))
        assert reads == 0 and rejected == [1]
        assert sent[0]["status"] == status and reason in sent[1]["body"]


def test_free_text_fields_and_file_names_are_bounded(client: TestClient, lesion_image: Image.Image) -> None:
    data = _encode(lesion_image)
    r = client.post("/predict", files=_files(data), data={"site": "x" * 500_000}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"]["reason"] == "invalid_request"
    assert "site" in r.json()["detail"]["message"] and str(MAX_FIELD_CHARS) in r.json()["detail"]["message"]
    assert len(r.content) < 5_000  # the value is not echoed back
    r = client.post("/predict", files=_files(data, "n" * (MAX_NAME_CHARS + 1) + ".png"), headers=AUTH)
    assert r.status_code == 422 and f"the limit is {MAX_NAME_CHARS}" in r.json()["detail"]["message"]
    hostile = "@SUM(1+1)*cmd.png"
    r = client.post("/predict", files=_files(data, hostile), data={"sex": "male"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["input"]["name"] == hostile


def test_no_answer_may_be_framed_and_results_are_not_cached(client: TestClient, lesion_image: Image.Image) -> None:
    page = client.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"] and "default-src 'self'" in page.headers["content-security-policy"]
    for r in (page, client.get("/health"), client.get("/docs"), client.post("/predict", files=_files(_encode(lesion_image)), headers=AUTH)):
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "cache-control" not in client.get("/health").headers


# -- bounded work ----------------------------------------------------------------------------------------
class _Held:
    """Holds every model call until released (the requests sit inside the service meanwhile)."""

    def __init__(self, predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.release = threading.Semaphore(0), threading.Event()
        original = predictor.predict

        def held(images: list[np.ndarray], **kw: Any) -> list[Any]:
            self.entered.release()
            assert self.release.wait(30)
            return original(images, **kw)

        monkeypatch.setattr(predictor, "predict", held)


def test_a_full_service_answers_503_with_retry_after_and_keeps_working(
    predictor: Predictor, lesion_image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _encode(lesion_image)
    with TestClient(create_app(predictor, audit=None, max_in_flight=1, max_active=1)) as c:
        held = _Held(predictor, monkeypatch)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/predict", files=_files(data))
            assert held.entered.acquire(timeout=30)  # the first request is inside the model: the service is full
            r = c.post("/predict", files=_files(data))
            assert r.status_code == 503 and r.json()["detail"]["reason"] == "busy"
            assert int(r.headers["retry-after"]) >= 1 and "try again in" in r.json()["detail"]["message"]
            assert c.get("/health").status_code == 200  # liveness is not queued behind the work
            held.release.set()
            assert first.result().status_code == 200
        assert c.post("/predict", files=_files(data)).status_code == 200
        counts = c.get("/health").json()["requests"]
        assert counts["predict"] == 2 and counts["busy"] == 1 and counts["errors"] == 0


def test_a_request_that_gets_no_work_slot_in_time_is_a_503(
    predictor: Predictor, lesion_image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _encode(lesion_image)
    with TestClient(create_app(predictor, audit=None, max_in_flight=4, max_active=1, request_timeout_s=0.5)) as c:
        held = _Held(predictor, monkeypatch)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/predict", files=_files(data))
            assert held.entered.acquire(timeout=30)
            r = c.post("/predict", files=_files(data))
            held.release.set()
            assert first.result().status_code == 200
    assert r.status_code == 503 and "no work slot became free" in r.json()["detail"]["message"] and r.headers["retry-after"]


def test_compare_needs_the_key_and_shares_the_work_bound_with_predict(
    predictor: Predictor, lesion_image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/compare runs the model twice: it is keyed, and admitted only while the service has room."""
    data = _encode(lesion_image)
    visits = {"before": ("v1.png", data, "image/png"), "after": ("v2.png", data, "image/png")}
    with TestClient(create_app(predictor, audit=None, api_keys=[KEY], max_in_flight=1, max_active=1)) as c:
        r = c.post("/compare", files=visits)
        assert r.status_code == 401 and r.json()["detail"]["reason"] == "api_key_missing"
        held = _Held(predictor, monkeypatch)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/predict", files=_files(data), headers=AUTH)
            assert held.entered.acquire(timeout=30)
            r = c.post("/compare", files=visits, headers=AUTH)
            assert r.status_code == 503 and r.json()["detail"]["reason"] == "busy" and int(r.headers["retry-after"]) >= 1
            held.release.set()
            assert first.result().status_code == 200
        r = c.post("/compare", files=visits, headers=AUTH)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        counts = c.get("/health", headers=AUTH).json()["requests"]
        assert counts == {"predict": 1, "explain": 0, "compare": 1, "rejected": 1, "busy": 1, "errors": 0}


def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    """At the ASGI level: a client that stops sending holds its place only until the deadline."""

    async def stalled_receive() -> dict[str, Any]:
        await asyncio.sleep(30)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def reading_app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = WorkGate(BodyCap(reading_app, max_bytes=1000), max_in_flight=1, timeout_s=0.2, retry_after=lambda waiting: 1)
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    asyncio.run(asyncio.wait_for(gate(scope, stalled_receive, send), 10))
    assert sent[0]["status"] == 408 and b"request_timeout" in sent[1]["body"] and gate.in_flight == 0


def test_bounds_are_validated(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="'max_in_flight' parameter must be a positive integer. Got 0"):
        create_app(predictor, audit=None, max_in_flight=0)
    with pytest.raises(ValueError, match="'max_active' parameter \\(3\\) must be at most 'max_in_flight' \\(2\\)"):
        create_app(predictor, audit=None, max_in_flight=2, max_active=3)
    with pytest.raises(ValueError, match="'request_timeout_s' parameter must be a number > 0"):
        create_app(predictor, audit=None, request_timeout_s=float("nan"))


def test_the_audit_failure_message_leaks_nothing(predictor: Predictor, lesion_image: Image.Image, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A real database failure (the table is gone): SQL, parameters and the path stay in the log."""
    db = tmp_path / "secret-folder" / "audit.sqlite"
    audit = AuditLog(db)
    with audit.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE predictions")
    with TestClient(create_app(predictor, audit=audit)) as c, caplog.at_level(logging.ERROR):
        r = c.post("/predict", files=_files(_encode(lesion_image)))
    assert r.status_code == 200 and r.json()["prediction"]["decision"]
    text = r.json()["audit_error"]
    assert r.json()["request_id"] in text and "secret-folder" not in r.text and "INSERT" not in r.text and "predictions" not in text
    assert any("INSERT" in str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info)


def test_retry_after_is_the_time_the_waiting_requests_need_in_the_work_slots() -> None:
    from skinlesion.delivery.service.context import RequestStats

    stats = RequestStats()
    for _ in range(50):
        stats.served("predict", 2.0)  # each request holds a work slot for 2 s
    assert stats.retry_after(8, 2) == 8 and stats.retry_after(1, 2) == 1 and stats.retry_after(1000, 1) == 60
    assert stats.counts["predict"] == 50
