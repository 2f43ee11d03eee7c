"""Follow-up comparison through the CLI, the REST service, the HTML report and the audit log."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.data.synthetic import ColourLayer, LesionSpec, change_spec, render_followup
from skinlesion.delivery.audit import AuditLog
from skinlesion.delivery.compare import compare_visits, image_info
from skinlesion.delivery.compare_report import render_comparison_report
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.images import ImageLimits, decode_image
from skinlesion.delivery.service import create_app
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.records import model_change

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
SIZE = (96, 128)
SPACING = 0.15


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def visits() -> tuple[np.ndarray, np.ndarray]:
    """An earlier and a later image of one lesion whose area doubled (another pose, same magnification)."""
    spec = LesionSpec("MEL", centre=(47.5, 63.5), radius_px=15.0, elongation=0.75, angle=0.5, pixel_spacing_mm=SPACING,
                      layers=(ColourLayer("light_brown"), ColourLayer("dark_brown", "blotch", 0.3, 6.0)))  # fmt: skip
    pair = render_followup(spec, change_spec(spec, "growth", 1.0, np.random.default_rng(0)), 1, size=SIZE, rotation_deg=30.0)
    return pair.before, pair.after


@pytest.fixture(scope="module")
def files(visits: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("visits")
    paths = (root / "visit1.png", root / "visit2.png")
    for p, image in zip(paths, visits, strict=True):
        p.write_bytes(_png(image))
    return paths


@pytest.fixture(scope="module")
def predictor(calibrated_bundle: Path) -> Predictor:
    return Predictor(load_bundle(calibrated_bundle), mc_samples=2)


def test_the_cli_writes_json_aligned_png_report_and_audit_rows(calibrated_bundle: Path, files: tuple[Path, Path], tmp_path: Path) -> None:
    out, db = tmp_path / "out", tmp_path / "audit.sqlite"
    args = ["compare", str(files[0]), str(files[1]), "--out", str(out), "-b", str(calibrated_bundle), "--mc-samples", "2",
            "--pixel-spacing-mm", str(SPACING), "--audit-db", str(db), "--age", "60"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Significant change" in r.output and "grew by" in r.output and "registration fit " in r.output
    c = json.loads((out / "comparison.json").read_text())
    assert c["summary"]["verdict"] == "significant change" and c["evolution"]["unit"] == "mm"
    assert c["before"]["pixel_spacing_mm"] == c["after"]["pixel_spacing_mm"] == SPACING
    assert c["before"]["input"]["path"] == str(files[0]) and len(c["after"]["input"]["sha256"]) == 64
    assert c["before"]["record"]["metadata"]["used"] is None  # image-only bundle: the age is not used
    assert set(c["model"]["probabilities"]) == set(c["before"]["record"]["prediction"]["probabilities"])
    assert c["files"] == {"aligned": "aligned.png", "report": "report.html"}
    with Image.open(out / "aligned.png") as im:
        assert im.size == (2 * SIZE[1] + 6, SIZE[0])
    html = (out / "report.html").read_text()
    for section in ("summary", "images", "changes", "model", "provenance"):
        assert f'id="{section}"' in html
    rows = AuditLog(db).rows()
    assert [row["source"] for row in rows] == ["cli:compare", "cli:compare"]
    assert [row["input_sha256"] for row in rows] == [c["before"]["input"]["sha256"], c["after"]["input"]["sha256"]]
    logged = json.loads(rows[1]["outputs_json"])
    assert logged["comparison"]["role"] == "after" and logged["comparison"]["summary"]["verdict"] == "significant change"
    assert logged["comparison"]["other_sha256"] == c["before"]["input"]["sha256"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--pixel-spacing-mm", "0.1", "--before-spacing", "0.1"], "not both"),
        (["--before-spacing", "0.1"], "pixel spacing of the before image is given but not that of the after image"),
        (["--after-spacing", "-2", "--before-spacing", "0.1"], "must be a positive number"),
        (["--age", "300"], "age"),
    ],
)
def test_cli_refuses_bad_spacings_and_metadata_before_loading_a_model(files: tuple[Path, Path], tmp_path: Path, extra: list[str], message: str) -> None:
    r = runner.invoke(app, ["compare", str(files[0]), str(files[1]), "--out", str(tmp_path / "o"), "-b", str(tmp_path / "no-bundle"), *extra])
    assert r.exit_code == 1 and message in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_cli_names_an_unusable_file(calibrated_bundle: Path, files: tuple[Path, Path], tmp_path: Path) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    for args, words in (([str(files[0]), str(tmp_path / "gone.png")], "gone.png: does not exist"), ([str(notes), str(files[1])], "notes.jpg")):
        r = runner.invoke(app, ["compare", *args, "--out", str(tmp_path / "o"), "-b", str(calibrated_bundle)])
        assert r.exit_code == 1 and words in r.output, r.output


def test_model_change_compares_probabilities_decision_and_every_flag() -> None:
    def record(p_mel: float, decision: str, flag: bool | None, extra: dict[str, Any]) -> dict[str, Any]:
        return {"notice": "n", "bundle": {"id": "x"}, "metadata": {"used": None},
                "prediction": {"probabilities": {"MEL": p_mel, "NV": 1 - p_mel}, "decision": decision, "decided_by": "t", **extra},
                "uncertainty": {"review": {"flag": flag, "note": "differs but explains"}, "method": "mc"}}  # fmt: skip

    before = record(0.2, "NV", False, {"referral": "routine"})
    after = record(0.7, "MEL", True, {"referral": "urgent"})
    after["uncertainty"]["review"]["note"] = "another note"
    m = model_change(before, after)
    assert m["probabilities"]["MEL"] == {"before": 0.2, "after": 0.7, "change": pytest.approx(0.5)}
    assert m["decision"] == {"before": "NV", "after": "MEL", "changed": True}
    assert m["review_flag"] == {"before": False, "after": True, "changed": True}
    assert {f["field"] for f in m["changed_fields"]} == {"prediction.decision", "prediction.referral", "uncertainty.review.flag"}
    assert model_change(before, before)["changed_fields"] == []
    with pytest.raises(ValueError, match="'after' parameter must be a prediction record"):
        model_change(before, {"prediction": {}})


def test_the_report_escapes_names_and_says_what_was_not_assessed(predictor: Predictor, visits: tuple[np.ndarray, np.ndarray]) -> None:
    inputs = (image_info(b"x", visits[0], "<script>alert(1)</script>.png"), image_info(b"y", visits[1], "later.png"))
    comparison, arrays = compare_visits(visits[0], visits[1], predictor=predictor, inputs=inputs)
    html = render_comparison_report(comparison, visits[0], visits[1], arrays)
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "not assessed" in html and "pixel spacings unknown" in html and "mm&sup2;" not in html
    assert html.count("data:image/png;base64,") == 2
    with pytest.raises(ValueError, match="'before' parameter must be an RGB uint8 array"):
        render_comparison_report(comparison, visits[0][..., 0], visits[1], arrays)


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> AuditLog:
    return AuditLog(tmp_path_factory.mktemp("audit") / "audit.sqlite")


@pytest.fixture(scope="module")
def client(predictor: Predictor, audit_db: AuditLog) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, audit=audit_db, limits=ImageLimits(max_pixels=40_000), max_upload_bytes=150_000)) as c:
        yield c


def _form(visits: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    return {"before": ("visit1.png", _png(visits[0])), "after": ("visit2.png", _png(visits[1]))}


def test_post_compare_answers_the_comparison_with_the_models_records(
    client: TestClient, predictor: Predictor, visits: tuple[np.ndarray, np.ndarray], audit_db: AuditLog
) -> None:
    before_rows = audit_db.count()
    r = client.post("/compare", files=_form(visits), data={"pixel_spacing_mm": str(SPACING)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["verdict"] == "significant change" and body["registration"]["scale_source"] == "pixel spacings"
    expected = predictor.predict([decode_image(_png(v)) for v in visits])
    assert body["before"]["record"]["prediction"] == expected[0]["prediction"]
    assert body["after"]["record"]["prediction"] == expected[1]["prediction"]
    assert body["model"]["probabilities"]["MEL"]["change"] == pytest.approx(
        expected[1]["prediction"]["probabilities"]["MEL"] - expected[0]["prediction"]["probabilities"]["MEL"])
    assert body["before"]["input"]["name"] == "visit1.png" and body["after"]["input"]["width"] == SIZE[1]
    assert r.headers["X-Request-ID"] == body["request_id"] and body["audit_error"] is None
    assert len(body["audit_ids"]) == 2 and audit_db.count() == before_rows + 2
    rows = audit_db.rows()[-2:]
    assert {row["source"] for row in rows} == {"serve:compare"} and rows[0]["request_id"] == rows[1]["request_id"] == body["request_id"]
    for key in ("before_png", "after_png"):
        with Image.open(io.BytesIO(base64.b64decode(body[key]))) as im:
            assert im.size == (SIZE[1], SIZE[0])
    assert client.get("/health").json()["requests"]["compare"] >= 1
    assert "/compare" in client.get("/openapi.json").json()["paths"]


def test_post_compare_rejects_with_the_field_named_and_stays_up(client: TestClient, visits: tuple[np.ndarray, np.ndarray]) -> None:
    form = _form(visits)
    cases = [
        ({**form, "after": ("notes.jpg", b"patient notes")}, {}, 415, "not_an_image", "after: the file"),
        ({"before": form["before"]}, {}, 422, "invalid_request", "after"),
        (form, {"before_spacing_mm": "0.1"}, 422, "invalid_request", "given but not that of the after image"),
        (form, {"pixel_spacing_mm": "0.1", "after_spacing_mm": "0.1"}, 422, "invalid_request", "not both"),
        (form, {"pixel_spacing_mm": "-1"}, 422, "invalid_request", "pixel_spacing_mm"),
        (form, {"sex": "x"}, 422, "invalid_metadata", "sex"),
    ]
    for files, data, status, reason, words in cases:
        r = client.post("/compare", files=files, data=data)
        assert r.status_code == status, r.text
        assert r.json()["detail"]["reason"] == reason and words in r.json()["detail"]["message"], r.text
    assert client.post("/compare", files={**form, "before": ("x.png", _png(np.zeros((300, 300, 3), np.uint8)))}).json()["detail"]["field"] == "before"


def test_a_failing_model_is_a_500_and_the_next_comparison_is_served(
    client: TestClient, predictor: Predictor, visits: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(predictor, "predict", broken)
        r = client.post("/compare", files=_form(visits))
    assert r.status_code == 500 and r.json()["detail"]["reason"] == "internal_error" and "see the server log" in r.json()["detail"]["message"]
    assert client.post("/compare", files=_form(visits)).status_code == 200
