"""Predictions name the operating point that decided them: images without metadata use the bundle's
without-metadata temperature and thresholds (torch engine without metadata, image-only engines
such as ONNX always), images with metadata the main ones; records, predictions.csv, the HTML
report and the REST response say which."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.batch import run_predictions
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.report import render_report
from skinlesion.delivery.service import create_app
from skinlesion.ensemble.bundle import WITH_METADATA, WITHOUT_METADATA, load_bundle, write_meta
from test_metadata_inputs import _ImageOnlyEngine  # the stand-in for ONNX Runtime (same folder)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OLD = {"age": 80, "sex": "male", "site": "back"}


def _images(n: int = 2) -> list[np.ndarray]:
    return [generate_lesion(label, seed=i, size=(48, 64), hair=False, vignette=False)[0] for i, label in zip(range(n), ["NV", "BCC"])]


@pytest.fixture(scope="module")
def bundle_dir(calibrated_fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MEL threshold 1.0 with metadata (never fires) and 0.0 without (always fires), under the
    priority-threshold policy: the operating point that decided is visible in the decision itself
    (and in the MEL flag, whatever the policy)."""
    path = tmp_path_factory.mktemp("nm-delivery") / "bundle"
    shutil.copytree(calibrated_fusion_bundle, path)
    meta = json.loads((path / "bundle.json").read_text())
    meta["decision"]["policy"] = "priority-threshold"
    meta["decision"]["thresholds"]["MEL"]["threshold"] = 1.0
    meta["decision"]["without_metadata"]["thresholds"]["MEL"]["threshold"] = 0.0
    write_meta(path, meta)
    return path


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path) -> Predictor:
    return Predictor(load_bundle(bundle_dir), mc_samples=0)


def test_torch_records_name_the_operating_point(predictor: Predictor) -> None:
    b = predictor.bundle
    without, with_md = b.thresholds_for(WITHOUT_METADATA), b.thresholds
    none, mixed = predictor.predict(_images()), predictor.predict(_images(), metadata=[None, OLD])
    for rec in (*none, mixed[0]):
        p = rec["prediction"]
        assert p["operating_point_name"] == WITHOUT_METADATA
        assert p["operating_point"].startswith("without metadata (temperature and thresholds fitted on validation with metadata hidden")
        assert p["thresholds"] == without and p["thresholds"]["MEL"] == 0.0
        assert p["decision"] == "MEL" and p["decided_by"] == "threshold of MEL (0.0000)"
        assert p["flags"][0]["class_name"] == "MEL" and p["flags"][0]["flagged"] and p["flags"][0]["threshold"] == 0.0
    p = mixed[1]["prediction"]
    assert p["operating_point_name"] == WITH_METADATA and p["operating_point"].startswith("with metadata")
    assert p["thresholds"] == with_md and p["thresholds"]["MEL"] == 1.0 and p["decision"] != "MEL"
    # metadata that encodes as missing (an unknown site) is "not given"
    (unknown_site,) = predictor.predict(_images(1), metadata=[{"site": "elbow"}])
    assert unknown_site["prediction"]["operating_point_name"] == WITHOUT_METADATA
    # the probabilities follow the point's temperature: the without-metadata one for images without metadata
    z = predictor.engine.view_logits(_images(1))
    expected = np.exp(b.log_probs(z, operating_point=WITHOUT_METADATA))[0]
    assert np.allclose(list(none[0]["prediction"]["probabilities"].values()), expected)
    assert not np.allclose(expected, np.exp(b.log_probs(z))[0])


def test_an_image_only_engine_uses_the_without_metadata_point(bundle_dir: Path) -> None:
    p = Predictor(load_bundle(bundle_dir), mc_samples=0)
    p.engine = _ImageOnlyEngine(p.engine)  # type: ignore[assignment]
    recs = p.predict(_images())
    assert [r["prediction"]["operating_point_name"] for r in recs] == [WITHOUT_METADATA] * 2
    assert all(r["prediction"]["decision"] == "MEL" for r in recs)


def test_a_fusion_bundle_without_the_point_says_so(fusion_bundle: Path) -> None:
    (rec,) = Predictor(load_bundle(fusion_bundle), mc_samples=0).predict(_images(1))
    assert rec["prediction"]["operating_point_name"] == WITH_METADATA
    assert "no operating point fitted without metadata" in rec["prediction"]["operating_point"]


def test_image_only_bundles_have_one_point(calibrated_bundle: Path) -> None:
    (rec,) = Predictor(load_bundle(calibrated_bundle), mc_samples=0).predict(_images(1), metadata=[OLD])
    assert rec["prediction"]["operating_point_name"] == WITH_METADATA
    assert "no member uses metadata" in rec["prediction"]["operating_point"]


def test_csv_report_and_rest_response_show_it(predictor: Predictor, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(_images()):
        Image.fromarray(im).save(folder / f"l{i}.png")
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,age,sex,site\n{folder / 'l0.png'},,,\n{folder / 'l1.png'},80,male,back\n")
    run_predictions(predictor, [listing], tmp_path / "out", batch_size=2)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert rows["l0"]["operating_point"] == WITHOUT_METADATA and rows["l0"]["decision"] == "MEL"
    assert rows["l1"]["operating_point"] == WITH_METADATA and rows["l1"]["decision"] != "MEL"

    (rec,) = predictor.predict(_images(1))
    html = render_report(rec, _images(1)[0], None)
    assert "Operating point: without metadata (temperature and thresholds fitted on validation with metadata hidden" in html

    buf = io.BytesIO()
    Image.fromarray(_images(1)[0]).save(buf, format="PNG")
    files = {"file": ("lesion.png", buf.getvalue(), "image/png")}
    with TestClient(create_app(predictor, audit=None)) as c:
        none = c.post("/predict", files=files).json()["prediction"]
        given = c.post("/predict", files=files, data={"age": "80", "sex": "male"}).json()["prediction"]
        schema = c.get("/openapi.json").json()["components"]["schemas"]["Prediction"]["properties"]
    assert none["operating_point_name"] == WITHOUT_METADATA and none["thresholds"]["MEL"] == 0.0
    assert given["operating_point_name"] == WITH_METADATA and given["thresholds"]["MEL"] == 1.0
    assert {"operating_point", "operating_point_name"} <= set(schema)
