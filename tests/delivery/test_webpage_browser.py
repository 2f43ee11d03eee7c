"""The web page end to end in headless Chromium (Debian's /usr/bin/chromium; no browser download):
upload a synthetic lesion, see the probabilities, decision, overlay and notice; a bad file shows its reason."""

from __future__ import annotations

import base64
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.service import create_app
from skinlesion.ensemble.bundle import load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "browser-test-key"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


def _unavailable(msg: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(msg + ", and CI=true forbids skipping the browser test")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if path is None:
        _unavailable("the web page test needs Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the web page test needs the playwright Python package")
    return path  # type: ignore[return-value]


@pytest.fixture(scope="module")
def base_url(calibrated_bundle: Path) -> Iterator[str]:
    app = create_app(Predictor(load_bundle(calibrated_bundle), mc_samples=3), audit=None, api_keys=[KEY], max_upload_bytes=2_000_000)
    yield from _serve(app)


@pytest.fixture(scope="module")
def gated_url(calibrated_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The calibrated bundle with its OOD threshold below every score: every image is gated."""
    import json

    out = tmp_path_factory.mktemp("gated") / "bundle"
    shutil.copytree(calibrated_bundle, out)
    meta = json.loads((out / "bundle.json").read_text())
    meta["decision"]["ood"]["threshold"] = -1.0
    (out / "bundle.json").write_text(json.dumps(meta))
    yield from _serve(create_app(Predictor(load_bundle(out), mc_samples=0), audit=None))


@pytest.fixture(scope="module")
def fusion_url(fusion_bundle: Path) -> Iterator[str]:
    yield from _serve(create_app(Predictor(load_bundle(fusion_bundle), mc_samples=2), audit=None))


def _serve(app: Any) -> Iterator[str]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def lesion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image, _, _ = generate_lesion("MEL", seed=3, hair=False, vignette=False)
    path = tmp_path_factory.mktemp("page") / "lesion.png"
    Image.fromarray(image).save(path)
    return path


def _drop(page: Any, selector: str, path: Path) -> None:
    """Drop a file on an element the way a browser does (a DataTransfer holding a File)."""
    data = page.evaluate_handle(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "image/png" }));
            return dt;
        }""",
        [base64.b64encode(path.read_bytes()).decode(), path.name],
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": data})
    page.dispatch_event(selector, "drop", {"dataTransfer": data})


def test_upload_shows_probabilities_decision_overlay_and_notice(chromium: str, base_url: str, lesion: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expected = httpx.post(f"{base_url}/predict", files={"file": (lesion.name, lesion.read_bytes())}, headers={"X-API-Key": KEY}, timeout=60).json()
    pred = expected["prediction"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            requests: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base_url + "/")
            expect(page.locator("#service")).to_contain_text("Model: shown once a valid API key is entered")  # /health names it to a key only

            # no key yet: the service's reason is shown
            page.set_input_files("#file", str(lesion))
            expect(page.locator("#error")).to_be_visible()
            expect(page.locator("#error-reason")).to_have_text("api_key_missing")

            # with the key, dropped on the drop zone
            page.fill("#api-key", KEY)
            page.fill("#spacing", "0.02")
            expect(page.locator("#service")).to_contain_text(expected["bundle"]["id"][:12])
            _drop(page, "#dropzone", lesion)
            page.wait_for_selector("#result[data-state=done]")
            expect(page.locator("#error")).to_be_hidden()

            rows = page.locator(".prob-row")
            assert rows.count() == len(pred["probabilities"])
            for i, (cls, p) in enumerate(pred["probabilities"].items()):
                row = rows.nth(i)
                assert row.get_attribute("data-class") == cls
                assert float(row.get_attribute("data-probability")) == pytest.approx(p, abs=1e-12)
                assert row.locator(".prob-value").inner_text() == f"{p:.3f}"
                assert row.locator(".thr").count() == (1 if pred["thresholds"].get(cls) is not None else 0)
            assert page.locator(".prob-row[data-class=MEL] .thr").count() == 1  # the calibrated MEL threshold

            expect(page.locator("#diagnosis")).to_have_text(pred["diagnosis"])
            expect(page.locator("#decision")).to_have_text(pred["decision"])
            expect(page.locator("#decided-by")).to_contain_text(pred["decided_by"])
            lines = page.locator("#flags li")
            assert lines.count() == len(pred["flags"]) + 1  # the MEL flag, then the referral
            expect(lines.nth(0)).to_contain_text(pred["flags"][0]["text"])
            expect(page.locator("#referral")).to_contain_text(pred["referral"]["text"])
            assert expected["ood"] is not None
            expect(page.locator("#ood-warning")).to_be_visible() if expected["ood"]["gated"] else expect(page.locator("#ood-warning")).to_be_hidden()
            for img in ("#cam-img", "#mask-img", "#input-img"):
                assert page.eval_on_selector(img, "el => el.complete && el.naturalWidth") == 200, img
            expect(page.locator("#notice")).to_contain_text("not a diagnosis")
            flag = expected["uncertainty"]["review"]["flag"]
            expect(page.locator("#review")).to_contain_text("REVIEW" if flag else "No review flag")
            expect(page.locator("#uncertainty")).to_contain_text("aleatoric")
            expect(page.locator("#uncertainty")).to_contain_text("epistemic")
            expect(page.locator("#abcde")).to_contain_text("Total Dermoscopy Score")
            expect(page.locator("#abcde")).to_contain_text(" mm")
            expect(page.locator("#provenance")).to_contain_text(expected["bundle"]["id"])
            expect(page.locator("#provenance")).to_contain_text("Convertedno (8-bit RGB, upright)")

            # a file that is not an image: its reason replaces the result
            page.set_input_files("#file", {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"patient notes, not an image"})
            expect(page.locator("#error-reason")).to_have_text("not_an_image")
            expect(page.locator("#error-message")).to_contain_text("not an image file")
            expect(page.locator("#error-status")).to_contain_text("415")
            expect(page.locator("#result")).to_be_hidden()

            assert errors == []
            outside = [u for u in requests if not u.startswith((base_url, "data:", "blob:"))]
            assert outside == []  # the page loads nothing from elsewhere (offline)
        finally:
            browser.close()


def test_a_file_over_the_limit_is_refused_in_the_browser(chromium: str, base_url: str) -> None:
    """The page checks the size from /health before uploading (a server would cut the upload off)."""
    from playwright.sync_api import expect, sync_playwright

    limit = httpx.get(f"{base_url}/health").json()["limits"]["max_upload_bytes"]
    big = io.BytesIO(bytes(limit + 1))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            expect(page.locator("#limits")).to_contain_text("MiB")
            page.set_input_files("#file", {"name": "huge.png", "mimeType": "image/png", "buffer": big.getvalue()})
            expect(page.locator("#error-reason")).to_have_text("too_large")
        finally:
            browser.close()


def test_api_docs_render_offline(chromium: str, base_url: str) -> None:
    """Swagger UI comes from the package and understands FastAPI's OpenAPI 3.1 (an older bundle
    renders "Unable to render this definition")."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(base_url + "/docs")
            expect(page.locator(".swagger-ui")).to_contain_text("/predict", timeout=20_000)
            expect(page.locator(".swagger-ui")).to_contain_text("/explain")
            assert "Unable to render" not in page.content()
            assert [u for u in requests if not u.startswith((base_url, "data:"))] == []
        finally:
            browser.close()


def test_patient_metadata_is_sent_and_what_was_used_is_shown(chromium: str, fusion_url: str, lesion: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(fusion_url + "/")
            sites = page.eval_on_selector_all("#site option", "els => els.map((e) => e.value)")
            assert sites[0] == "" and "lower extremity" in sites and len(sites) == 15
            page.set_input_files("#file", str(lesion))
            page.wait_for_selector("#result[data-state=done]")
            expect(page.locator("#metadata")).to_contain_text("Not given")
            page.fill("#age", "80")
            page.select_option("#sex", "male")
            page.select_option("#site", "back")
            with page.expect_response("**/explain") as answer:
                page.set_input_files("#file", str(lesion))
            body = answer.value.json()
            assert body["metadata"]["used"] == {"age": 80.0, "sex": "male", "site": "back"}
            page.wait_for_selector("#result[data-state=done]")
            expect(page.locator("#metadata")).to_contain_text("Used by m0-test_efficientnet: age 80, sex male, site back")
            assert errors == []
        finally:
            browser.close()


def test_a_gated_image_shows_the_out_of_distribution_warning_beside_its_diagnosis(chromium: str, gated_url: str, lesion: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(gated_url + "/")
            page.set_input_files("#file", str(lesion))
            page.wait_for_selector("#result[data-state=done]")
            expect(page.locator("#ood-warning")).to_be_visible()
            expect(page.locator("#ood-warning")).to_contain_text("does not look like the dermoscopic images the model was trained on")
            expect(page.locator("#diagnosis")).not_to_be_empty()  # the diagnosis stays, with the warning beside it
            if os.environ.get("SKINLESION_SCREENSHOT"):
                page.screenshot(path=os.environ["SKINLESION_SCREENSHOT"], full_page=True)
        finally:
            browser.close()


def test_compare_two_visits_shows_verdict_registered_images_and_changes(chromium: str, base_url: str, tmp_path: Path) -> None:
    import numpy as np
    from playwright.sync_api import expect, sync_playwright

    from skinlesion.data.synthetic import change_spec, fits_followup, render_followup, sample_spec

    spec = fits_followup(sample_spec("MEL", np.random.default_rng(2)), (150, 200), 1.0, 1.0, 0.0)
    pair = render_followup(spec, change_spec(spec, "growth", 1.0, np.random.default_rng(0)), 0, rotation_deg=20.0)
    paths = [tmp_path / "visit1.png", tmp_path / "visit2.png"]
    for p, image in zip(paths, (pair.before, pair.after), strict=True):
        Image.fromarray(image).save(p)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base_url + "/")
            expect(page.locator("#compare")).to_be_hidden()
            page.check("#mode-compare")
            expect(page.locator("#compare")).to_be_visible()
            expect(page.locator("#dropzone")).to_be_hidden()
            page.fill("#api-key", KEY)
            page.click("#compare-run")  # no files yet: said in the page
            expect(page.locator("#compare-error-reason")).to_have_text("missing_file")
            page.set_input_files("#compare-before", str(paths[0]))
            page.set_input_files("#compare-after", str(paths[1]))
            page.fill("#compare-before-spacing", str(pair.before_spacing_mm))
            page.fill("#compare-after-spacing", str(pair.after_spacing_mm))
            with page.expect_response("**/compare") as answer:
                page.click("#compare-run")
            body = answer.value.json()
            page.wait_for_selector("#compare-result[data-state=done]")
            expect(page.locator("#compare-verdict")).to_have_attribute("data-verdict", body["summary"]["verdict"])
            assert body["summary"]["verdict"] == "significant change"
            expect(page.locator("#compare-verdict")).to_have_text("Significant change")
            expect(page.locator("tr[data-criterion=growth]")).to_contain_text("reached")
            expect(page.locator("#compare-changes")).to_have_attribute("data-unit", "mm")
            expect(page.locator("#compare-changes")).to_contain_text("mm²")
            for img in ("#compare-before-img", "#compare-after-img"):
                assert page.eval_on_selector(img, "el => el.complete && el.naturalWidth") == 200, img
            rows = page.locator("#compare-probs tr[data-class]")
            assert rows.count() == len(body["model"]["probabilities"])
            expect(page.locator("#compare-provenance")).to_contain_text(body["bundle"]["id"])
            # back to one image: the single-image drop zone returns
            page.check("#mode-single")
            expect(page.locator("#dropzone")).to_be_visible()
            expect(page.locator("#compare")).to_be_hidden()
            assert errors == []
        finally:
            browser.close()
