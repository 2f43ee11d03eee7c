"""The REST service (FastAPI TestClient): results, every rejection, API keys, concurrency, audit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
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
from typer.testing import CliRunner

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.audit import AuditError, AuditLog, api_key_id
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.images import ImageLimits, decode_image
from skinlesion.delivery.service import create_app
from skinlesion.delivery.service.errors import BodyCap
from skinlesion.delivery.service.settings import MULTIPART_OVERHEAD
from skinlesion.ensemble.bundle import load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "s3cret-key-for-tests"
CAP = 150_000  # upload cap of the test app (a synthetic lesion PNG is ~55 kB)
MAX_PIXELS = 40_000  # 200 x 150 = 30,000 passes; 250 x 250 does not


def _encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _lesion(label: str = "MEL", seed: int = 3) -> bytes:
    image, _, _ = generate_lesion(label, seed=seed, hair=False, vignette=False)
    return _encode(Image.fromarray(image))


def _noise(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _files(data: bytes, name: str = "lesion.png") -> dict[str, Any]:
    return {"file": (name, data, "application/octet-stream")}


AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def predictor(calibrated_bundle: Path) -> Predictor:
    return Predictor(load_bundle(calibrated_bundle), mc_samples=3)


@pytest.fixture(scope="module")
def lesion() -> bytes:
    return _lesion()


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> Iterator[TestClient]:
    app = create_app(predictor, audit=None, api_keys=[KEY], limits=ImageLimits(max_pixels=MAX_PIXELS), max_upload_bytes=CAP)
    with TestClient(app) as c:
        yield c


def test_health_is_open_but_names_the_model_only_to_a_key(client: TestClient, predictor: Predictor) -> None:
    public = {"status": "ok", "api_key_required": True, "limits": {"max_upload_bytes": CAP, "max_pixels": MAX_PIXELS, "min_side": 16}}
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = client.get("/health", headers=headers)
        assert r.status_code == 200
        h = r.json()
        assert set(h) == {*public, "notice"} and {k: h[k] for k in public} == public and "not a diagnosis" in h["notice"]
        assert predictor.bundle.bundle_id not in r.text and "version" not in r.text
    h = client.get("/health", headers=AUTH).json()
    assert h["status"] == "ok" and h["bundle_id"] == predictor.bundle.bundle_id and h["engine"] == "torch"
    assert {k: h[k] for k in public} == public and h["version"]
    assert set(h["requests"]) == {"predict", "explain", "compare", "rejected", "busy", "errors"} and h["uptime_s"] >= 0


def test_model_shows_thresholds_and_review_but_no_server_paths(client: TestClient, predictor: Predictor) -> None:
    assert client.get("/model").json()["detail"]["reason"] == "api_key_missing"
    r = client.get("/model", headers=AUTH)
    assert r.status_code == 200
    m = r.json()
    assert m["bundle"]["id"] == predictor.bundle.bundle_id and "path" not in m["bundle"]
    meta = m["meta"]
    assert meta["classes"] == list(predictor.bundle.classes)
    assert meta["decision"]["thresholds"]["MEL"]["rule"] and meta["review"]["score"] == "mutual_information"
    assert m["mc_samples"] == 3
    text = r.text
    assert str(predictor.bundle.path) not in text and "source_checkpoint" not in text and "data_config" not in text


def test_predict_equals_the_predictor_on_the_decoded_image(client: TestClient, predictor: Predictor, lesion: bytes) -> None:
    r = client.post("/predict", files=_files(lesion), headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictor.predict([decode_image(lesion)])[0]
    assert body["prediction"] == expected["prediction"]
    assert body["uncertainty"] == expected["uncertainty"]
    assert body["bundle"] == expected["bundle"] and body["notice"] == expected["notice"]
    assert body["input"] == {"name": "lesion.png", "sha256": hashlib.sha256(lesion).hexdigest(), "bytes": len(lesion), "width": 200, "height": 150}
    assert r.headers["X-Request-ID"] == body["request_id"] and len(body["request_id"]) == 32
    assert body["audit_id"] is None and body["audit_error"] is None  # this app has no audit log
    assert "MEL" in body["prediction"]["thresholds"] and isinstance(body["uncertainty"]["review"]["flag"], bool)


def test_explain_adds_overlay_outline_abcde_and_tds(client: TestClient, lesion: bytes) -> None:
    r = client.post("/explain", files=_files(lesion), data={"pixel_spacing_mm": "0.02"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    predicted = client.post("/predict", files=_files(lesion), headers=AUTH).json()
    assert body["prediction"] == predicted["prediction"] and body["uncertainty"] == predicted["uncertainty"]
    for key in ("cam_png", "mask_png"):
        png = Image.open(io.BytesIO(base64.b64decode(body[key])))
        assert png.format == "PNG" and png.size == (200, 150) and png.mode == "RGB"
    assert body["attention"]["method"] == "gradcam++" and body["attention"]["class"] == body["prediction"]["decision"]
    assert body["abcde"]["diameter_unit"] == "mm" and body["abcde"]["pixel_spacing_mm"] == 0.02
    assert body["dermoscopy_score"]["components"]["asymmetry"] in (0, 1, 2)
    assert body["segmentation"]["quality"] and "not a diagnosis" in body["notice"]


def _bad_inputs() -> list[tuple[str, bytes, int, str]]:
    rgb = Image.fromarray(_noise(40, 50))
    return [
        ("empty", b"", 422, "empty"),
        ("text", b"patient notes, not an image\n" * 3, 415, "not_an_image"),
        ("truncated_jpeg", _encode(Image.fromarray(_noise(400, 400)), "JPEG")[:600], 422, "truncated"),
        ("nan", _encode(Image.fromarray(np.full((40, 50), np.nan, np.float32), "F"), "TIFF"), 415, "unsupported_mode"),
        ("postscript", _encode(rgb, "EPS"), 415, "not_an_image"),
        ("tiny", _encode(Image.fromarray(_noise(8, 50))), 422, "too_small"),
        ("too_many_pixels", _encode(Image.new("RGB", (250, 250), (180, 120, 90))), 413, "too_many_pixels"),
        ("over_cap_file", b"\x89PNG" + bytes(CAP + 1000), 413, "too_large"),  # under the body cap: stopped while reading the file
        ("over_cap_body", bytes(CAP + MULTIPART_OVERHEAD + 1), 413, "too_large"),  # Content-Length over the body cap
    ]


@pytest.mark.parametrize(("name", "data", "status", "reason"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
@pytest.mark.parametrize("route", ["/predict", "/explain"])
def test_each_rejection_is_a_4xx_with_a_reason_and_the_service_stays_up(
    client: TestClient, lesion: bytes, route: str, name: str, data: bytes, status: int, reason: str
) -> None:
    before = client.get("/health", headers=AUTH).json()["requests"]["rejected"]
    r = client.post(route, files=_files(data, f"{name}.jpg"), headers=AUTH)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["reason"] == reason and detail["message"]
    assert client.get("/health", headers=AUTH).json()["requests"]["rejected"] == before + 1
    assert client.post("/predict", files=_files(lesion), headers=AUTH).status_code == 200


def test_bad_requests_and_keys_are_rejected_with_reasons(client: TestClient, lesion: bytes) -> None:
    cases = [
        (client.post("/predict", headers=AUTH), 422, "missing_file", "form field 'file'"),
        (client.post("/predict", files={"image": ("a.png", lesion)}, headers=AUTH), 422, "missing_file", "form field 'file'"),
        (client.post("/predict", data={"file": "not a file"}, headers=AUTH), 422, "missing_file", "form field 'file'"),
        (client.post("/explain", files=_files(lesion), data={"pixel_spacing_mm": "-1"}, headers=AUTH), 422, "invalid_request", "pixel_spacing_mm"),
        (client.post("/explain", files=_files(lesion), data={"pixel_spacing_mm": "inf"}, headers=AUTH), 422, "invalid_request", "pixel_spacing_mm"),
        (client.post("/predict", files=_files(lesion)), 401, "api_key_missing", "X-API-Key"),
        (client.post("/explain", files=_files(lesion), headers={"X-API-Key": "wrong"}), 403, "api_key_invalid", "not one this service accepts"),
        (client.get("/no/such/route"), 404, "not_found", "Not Found"),
        (client.get("/predict"), 405, "method_not_allowed", "Method Not Allowed"),
    ]
    for r, status, reason, words in cases:
        assert r.status_code == status, r.text
        assert r.json()["detail"]["reason"] == reason and words in r.json()["detail"]["message"]
    assert client.post("/predict", files=_files(lesion), headers=AUTH).status_code == 200


def test_a_streamed_body_is_stopped_at_the_cap(client: TestClient) -> None:
    """No Content-Length (a chunked upload): the body is counted as it arrives."""
    boundary = "xyzzy"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()

    def chunks() -> Iterator[bytes]:
        yield head
        yield from (bytes(64 * 1024) for _ in range(10))
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/predict", content=chunks(), headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["detail"]["reason"] == "too_large"
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize(("path", "reads"), [("/predict", 3), ("/compare", 5)])
def test_body_cap_stops_reading_at_the_cap(path: str, reads: int) -> None:
    """At the ASGI level: an app that would read everything gets no further than the cap (the path's own
    cap where it has one: /compare takes two files)."""
    messages = [{"type": "http.request", "body": bytes(64 * 1024), "more_body": True} for _ in range(100)]
    delivered, sent = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        delivered += 1
        return messages[delivered - 1]

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def greedy_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    rejected = []
    cap = BodyCap(greedy_app, max_bytes=150_000, on_reject=lambda: rejected.append(1), per_path={"/compare": 300_000})
    asyncio.run(cap({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send))
    assert delivered == reads and rejected == [1]  # 3 x 64 KiB > 150,000 and 5 x 64 KiB > 300,000: stopped there
    assert sent[0]["status"] == 413 and b'"too_large"' in sent[1]["body"]


def test_without_keys_anyone_may_call_and_is_audited_as_anonymous(predictor: Predictor, lesion: bytes, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.sqlite")
    with TestClient(create_app(predictor, audit=audit)) as c:
        r = c.post("/predict", files=_files(lesion))
        assert r.status_code == 200 and c.get("/health").json()["api_key_required"] is False
    assert audit.rows()[0]["user_id"] == "anonymous"


def test_concurrent_requests_match_sequential_ones_and_never_overlap_in_the_model(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = [_lesion(label, seed) for label, seed in (("MEL", 3), ("NV", 4), ("BCC", 5), ("BKL", 6))] * 2
    n = len(uploads)  # every request gets a work slot: only Predictor.lock can keep them apart
    with TestClient(create_app(predictor, audit=None, max_in_flight=n, max_active=n)) as c:
        sequential = [c.post("/predict", files=_files(d)).json() for d in uploads]
        barrier = threading.Barrier(len(uploads), timeout=30)  # every request inside an endpoint at once
        inside, most_inside, count_lock = 0, 0, threading.Lock()
        predict, view_logits = predictor.predict, predictor.engine.view_logits

        def gated_predict(images: list[np.ndarray]) -> list[dict[str, Any]]:
            barrier.wait()
            return predict(images)

        def counted_view_logits(images: list[np.ndarray]) -> list[np.ndarray]:
            nonlocal inside, most_inside
            with count_lock:
                inside += 1
                most_inside = max(most_inside, inside)
            try:
                return view_logits(images)
            finally:
                with count_lock:
                    inside -= 1

        monkeypatch.setattr(predictor, "predict", gated_predict)
        monkeypatch.setattr(predictor.engine, "view_logits", counted_view_logits)
        with ThreadPoolExecutor(len(uploads)) as pool:
            responses = list(pool.map(lambda d: c.post("/predict", files=_files(d)), uploads))
    assert [r.status_code for r in responses] == [200] * len(uploads), [r.text for r in responses if r.status_code != 200]
    for got, want in zip((r.json() for r in responses), sequential, strict=True):
        assert got["prediction"] == want["prediction"] and got["uncertainty"] == want["uncertainty"]
        assert got["input"]["sha256"] == want["input"]["sha256"]
    assert most_inside == 1  # Predictor.lock serialised the model calls
    assert len({r.json()["request_id"] for r in responses}) == len(uploads)


def test_audit_rows_hold_hash_bundle_decision_flag_and_user_but_no_image(predictor: Predictor, lesion: bytes, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.sqlite")
    with TestClient(create_app(predictor, audit=audit, api_keys=[KEY, "other"])) as c:
        p = c.post("/predict", files=_files(lesion), headers=AUTH).json()
        e = c.post("/explain", files=_files(lesion), headers={"X-API-Key": "other"}).json()
        c.post("/predict", files=_files(b"not an image"), headers=AUTH)  # rejected: no row
    rows = audit.rows(with_images=True)
    assert [r["id"] for r in rows] == [p["audit_id"], e["audit_id"]]
    for row, body, key in ((rows[0], p, KEY), (rows[1], e, "other")):
        assert row["source"] == "serve" and row["request_id"] == body["request_id"]
        assert row["input_sha256"] == hashlib.sha256(lesion).hexdigest() and row["input_name"] == "lesion.png"
        assert row["bundle_id"] == predictor.bundle.bundle_id
        assert row["decision"] == body["prediction"]["decision"] and row["review_flag"] == body["uncertainty"]["review"]["flag"]
        assert row["user_id"] == api_key_id(key) and key not in str(row)
        assert row["has_image"] is False and row["image"] is None
    assert '"cam_png"' not in rows[1]["outputs_json"] and '"abcde"' in rows[1]["outputs_json"]


def test_audit_stores_image_bytes_only_when_asked(predictor: Predictor, lesion: bytes, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.sqlite", store_images=True)
    with TestClient(create_app(predictor, audit=audit)) as c:
        assert c.post("/predict", files=_files(lesion)).status_code == 200
    row = audit.rows(with_images=True)[0]
    assert row["has_image"] is True and row["image"] == lesion


class _BrokenAudit:
    def record(self, **kw: Any) -> int:
        raise AuditError("Cannot write to the audit database sqlite:///x: disk I/O error")


def test_an_audit_failure_does_not_lose_the_prediction(
    predictor: Predictor, lesion: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(predictor, audit=_BrokenAudit())) as c, caplog.at_level(logging.ERROR):  # type: ignore[arg-type]
        r = c.post("/predict", files=_files(lesion))
    assert r.status_code == 200
    body = r.json()
    assert body["prediction"]["decision"] and body["audit_id"] is None
    assert body["audit_error"] == f"the audit log could not be written (request {body['request_id']}); the details are in the server log"
    failed = [rec for rec in caplog.records if "audit write failed" in rec.getMessage() and body["request_id"] in rec.getMessage()]
    assert failed and "disk I/O error" in str(failed[0].exc_info[1])  # the database's words stay in the server log


def test_a_model_failure_is_a_json_500_and_the_next_request_works(
    predictor: Predictor, lesion: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(predictor, audit=None)) as c:
        calls = {"n": 0}
        predict = predictor.predict

        def flaky(images: list[np.ndarray]) -> list[dict[str, Any]]:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            return predict(images)

        monkeypatch.setattr(predictor, "predict", flaky)
        r = c.post("/predict", files=_files(lesion))
        assert r.status_code == 500
        d = r.json()["detail"]
        assert d["reason"] == "internal_error" and "the model failed" in d["message"] and "CUDA" not in d["message"]
        assert c.post("/predict", files=_files(lesion)).status_code == 200
        monkeypatch.setattr(predictor, "explain", lambda *a, **k: (_ for _ in ()).throw(ValueError("hooks broke")))
        assert c.post("/explain", files=_files(lesion)).json()["detail"]["reason"] == "internal_error"
        assert c.get("/health").json()["requests"]["errors"] == 2  # no keys: /health shows the counts to anyone


def test_any_unexpected_exception_is_a_json_500(predictor: Predictor) -> None:
    app = create_app(predictor, audit=None)

    def boom() -> None:
        raise KeyError("unexpected")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
        assert r.status_code == 500 and r.json() == {"detail": {"reason": "internal_error", "message": "internal error; see the server log"}}
        assert c.get("/health").status_code == 200


def test_openapi_documents_uploads_results_errors_and_the_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/predict"]["post"]
    form = spec["components"]["schemas"][post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]]
    assert form["required"] == ["file"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    for code in ("401", "403", "413", "415", "422", "500"):
        assert post["responses"][code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "cam_png" in spec["components"]["schemas"]["ExplainResponse"]["properties"]
    assert "pixel_spacing_mm" in str(spec["paths"]["/explain"]["post"]["requestBody"]) or "pixel_spacing_mm" in str(spec["components"])
    assert any(s.get("name") == "X-API-Key" for s in spec["components"]["securitySchemes"].values())
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # offline: served from the package
    assert "/docs-static/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-static/swagger-ui.css").status_code == 200


def test_the_page_is_served_open_and_offline(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert 'id="api-key"' in r.text and 'id="dropzone"' in r.text and "not a diagnosis" in r.text
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).text
        assert client.get(path).status_code == 200
        assert "http://" not in text and "https://" not in text and "//cdn" not in text  # nothing fetched from elsewhere


def test_create_app_checks_its_cap(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="'max_upload_bytes' parameter must be a positive integer. Got 0"):
        create_app(predictor, audit=None, max_upload_bytes=0)


# -- the command ----------------------------------------------------------------------------------
def test_serve_command_loads_once_and_wires_keys_limits_and_audit(
    calibrated_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lesion: bytes
) -> None:
    import uvicorn

    from skinlesion.cli.main import app as cli

    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setenv("SKINLESION_API_KEYS", "env-key, ,other-env-key")
    keys = tmp_path / "keys.txt"
    keys.write_text("# clinic A\nfile-key\n\n")
    db = tmp_path / "audit" / "a.sqlite"
    r = CliRunner().invoke(cli, [
        "serve", "--bundle", str(calibrated_bundle), "--port", "8123", "--mc-samples", "2", "--api-key-file", str(keys),
        "--audit-db", str(db), "--audit-store-images", "--max-upload-mb", "0.1", "--max-pixels", "40000",
    ])
    assert r.exit_code == 0, r.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8123
    with TestClient(started["app"]) as c:
        h = c.get("/health").json()
        assert h["limits"] == {"max_upload_bytes": 104857, "max_pixels": 40000, "min_side": 16} and h["api_key_required"]
        for key in ("file-key", "env-key", "other-env-key"):
            assert c.post("/predict", files=_files(lesion), headers={"X-API-Key": key}).status_code == 200
        assert c.post("/predict", files=_files(lesion), headers={"X-API-Key": "clinic A"}).status_code == 403
        assert c.post("/predict", files=_files(lesion), headers={"X-API-Key": "env-key"}).json()["uncertainty"]["n_samples"] == 2
    rows = AuditLog(db).rows(with_images=True)
    assert len(rows) == 4 and rows[0]["image"] == lesion and rows[0]["user_id"] == api_key_id("file-key")


def test_serve_command_errors_are_one_line(calibrated_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from skinlesion.cli.main import app as cli

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("must not start"))
    monkeypatch.delenv("SKINLESION_API_KEYS", raising=False)
    empty = tmp_path / "keys.txt"
    empty.write_text("# nothing\n\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["serve", "--bundle", str(calibrated_bundle), "--api-key-file", str(empty), "--audit-db", str(tmp_path / "a.sqlite")])
    assert r.exit_code == 1 and "holds no key" in r.output
    import skinlesion.ensemble.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "default_bundle_dir", lambda: tmp_path / "no-default")  # neither given: the default
    r = runner.invoke(cli, ["serve", "--audit-db", str(tmp_path / "a.sqlite")])
    assert r.exit_code == 1 and "this installation has no default bundle" in r.output
    r = runner.invoke(cli, ["serve", "--bundle", str(tmp_path / "nope"), "--audit-db", str(tmp_path / "a.sqlite")])
    assert r.exit_code == 1 and "does not exist" in r.output
    assert "--audit-store-images" in runner.invoke(cli, ["serve", "--help"]).output
