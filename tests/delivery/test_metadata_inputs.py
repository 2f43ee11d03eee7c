"""Patient metadata at prediction time: checks, the Predictor (probabilities, MC dropout, CAM,
records), the service's form fields and the ONNX refusal, on a bundle with a metadata fusion member
(``m0``) and an image-only member (``m1``)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.audit import AuditLog
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.metadata import MetadataUnsupportedError
from skinlesion.delivery.service import create_app
from skinlesion.ensemble.bundle import Bundle, load_bundle
from skinlesion.explain.cam import ensemble_cam
from skinlesion.records.metadata import MetadataError, normalise_records
from skinlesion.uncertainty.mc_dropout import ensemble_mc_predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FUSION, IMAGE_ONLY = "m0-test_efficientnet", "m1-test_efficientnet"
OLD = {"age": 80, "sex": "male", "site": "back"}
YOUNG = {"age": "5", "sex": "Female", "site": "face"}


def _images(n: int = 2) -> list[np.ndarray]:
    return [generate_lesion(label, seed=i, size=(48, 64), hair=False, vignette=False)[0] for i, label in zip(range(n), ["MEL", "NV", "BCC"])]


def _perturb(bundle: Bundle) -> Bundle:
    """Large weights on the fusion member's metadata features, as a model that relies on them."""
    model = bundle.members[0].model
    with torch.no_grad():
        model.classifier.weight[:, -model.hidden :].normal_(0.0, 5.0, generator=torch.Generator().manual_seed(0))
    return bundle


@pytest.fixture(scope="module")
def bundle(fusion_bundle: Path) -> Bundle:
    b = _perturb(load_bundle(fusion_bundle))
    assert [m.name for m in b.members] == [FUSION, IMAGE_ONLY]
    return b


@pytest.fixture(scope="module")
def predictor(bundle: Bundle) -> Predictor:
    return Predictor(bundle, mc_samples=3)


def _probs(rec: dict[str, Any]) -> np.ndarray:
    return np.array(list(rec["prediction"]["probabilities"].values()))


# -- the Predictor -----------------------------------------------------------------------------------
def test_metadata_changes_the_fusion_prediction_and_missing_equals_none(predictor: Predictor) -> None:
    images = _images(2)
    none = predictor.predict(images)
    given = predictor.predict(images, metadata=[OLD, YOUNG])
    assert np.abs(_probs(given[0]) - _probs(none[0])).max() > 1e-3
    assert np.abs(_probs(given[1]) - _probs(none[1])).max() > 1e-3
    for missing in ([None, None], [{}, {"age": "", "sex": "unknown", "site": ""}]):
        assert predictor.predict(images, metadata=missing) == none  # probabilities, uncertainty, record: identical
    mixed = predictor.predict(images, metadata=[None, YOUNG])
    assert mixed[0]["prediction"] == none[0]["prediction"] and mixed[1]["prediction"] == given[1]["prediction"]
    # the fusion member alone moved: the image-only member's logits are the same
    with_md = predictor.engine.view_logits(images, metadata=normalise_records([OLD, YOUNG], 2))
    without = predictor.engine.view_logits(images)
    assert np.abs(with_md[0] - without[0]).max() > 1e-2
    np.testing.assert_array_equal(with_md[1], without[1])


def test_record_shows_the_metadata_used(predictor: Predictor) -> None:
    (none,) = predictor.predict(_images(1))
    assert none["metadata"] == {"used": None, "members_using_metadata": [FUSION], "features": ["age", "sex", "site"]}
    (rec,) = predictor.predict(_images(1), metadata=[YOUNG])
    assert rec["metadata"]["used"] == {"age": 5.0, "sex": "female", "site": "face"}
    json.dumps(rec)  # JSON-ready
    with pytest.raises(MetadataError, match=r"'sex' value of metadata\[0\].*Got 'x'"):
        predictor.predict(_images(1), metadata=[{"sex": "x"}])


def test_mc_dropout_feeds_the_metadata_to_fusion_members_only(predictor: Predictor) -> None:
    members, images, t = predictor.bundle.members, _images(2), 4
    records = normalise_records([OLD, YOUNG], 2)
    with_md = ensemble_mc_predict(members, images, n_samples=t, seed=0, metadata=records)
    without = ensemble_mc_predict(members, images, n_samples=t, seed=0)
    assert with_md.stochastic
    assert np.abs(with_md.samples[:t] - without.samples[:t]).max() > 1e-3  # the fusion member's passes
    np.testing.assert_array_equal(with_md.samples[t:], without.samples[t:])  # the image-only member's
    missing = ensemble_mc_predict(members, images, n_samples=t, seed=0, metadata=[None, {}])
    np.testing.assert_array_equal(missing.samples, without.samples)
    # and through the Predictor: the uncertainty record follows the metadata
    u_with = predictor.predict(images, metadata=[OLD, YOUNG])[0]["uncertainty"]
    u_without = predictor.predict(images)[0]["uncertainty"]
    assert u_with["mean_probabilities"] != u_without["mean_probabilities"]
    assert u_with["predictive_entropy"] != u_without["predictive_entropy"]


def test_cam_and_explain_use_the_metadata(predictor: Predictor) -> None:
    image = _images(1)[0]
    members = predictor.bundle.members
    plain = ensemble_cam(members, [image], method="gradcam")
    with_md = ensemble_cam(members, [image], method="gradcam", metadata=normalise_records([OLD], 1))
    assert np.abs(with_md.probabilities - plain.probabilities).max() > 1e-3  # the class explained follows it
    assert with_md.maps[0].shape == image.shape[:2]
    result, arrays = predictor.explain(image, metadata=OLD)
    (rec,) = predictor.predict([image], metadata=[OLD])
    assert result["prediction"] == rec["prediction"] and result["metadata"] == rec["metadata"]
    assert result["attention"]["metadata"] == "used" and result["attention"]["class"] == rec["prediction"]["decision"]
    result, _ = predictor.explain(image)
    assert result["attention"]["metadata"] == "not given" and result["metadata"]["used"] is None
    with pytest.raises(MetadataError, match="'age'"):
        predictor.explain(image, metadata={"age": "abc"})


class _ImageOnlyEngine:
    """Stands for ONNX Runtime: image-only graphs (the real OnnxEngine is checked below)."""

    name = "onnx"
    accepts_metadata = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def view_logits(self, images: Any, metadata: Any = None) -> Any:
        assert metadata is None
        return self.inner.view_logits(images)


@pytest.fixture()
def image_only_engine(bundle: Bundle) -> Predictor:
    p = Predictor(bundle, mc_samples=0)
    p.engine = _ImageOnlyEngine(p.engine)  # type: ignore[assignment]
    return p


def test_an_image_only_engine_refuses_metadata_for_fusion_members(image_only_engine: Predictor, bundle: Bundle) -> None:
    from skinlesion.delivery.onnx_runtime import OnnxEngine

    p = image_only_engine
    assert not p.accepts_metadata
    with pytest.raises(MetadataUnsupportedError, match=r"onnx engine runs image-only graphs, but members \['m0-test_efficientnet'\]"):
        p.predict(_images(1), metadata=[OLD])
    assert p.predict(_images(1), metadata=[{"sex": "unknown"}])[0]["metadata"]["used"] is None  # all missing: fine
    onnx = OnnxEngine.__new__(OnnxEngine)  # the real engine's check on a format 1 export, without exporting graphs
    onnx.bundle, onnx.onnx_dir, onnx.takes_metadata = bundle, Path("old/onnx"), [False, False]
    assert onnx.accepts_metadata is False
    with pytest.raises(MetadataUnsupportedError, match=r"ONNX graphs in old/onnx take the image only .*re-export with `skinlesion export onnx"):
        onnx.view_logits(_images(1), metadata=[OLD])


# -- the service -------------------------------------------------------------------------------------
def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_service_form_fields(predictor: Predictor, tmp_path: Path) -> None:
    image = _images(1)[0]
    files = {"file": ("lesion.png", _png(image), "image/png")}
    audit = AuditLog(tmp_path / "audit.sqlite")
    with TestClient(create_app(predictor, audit=audit)) as c:
        none = c.post("/predict", files=files).json()
        body = c.post("/predict", files=files, data={"age": "80", "sex": "male", "site": "back"}).json()
        empty = c.post("/predict", files=files, data={"age": "", "sex": "", "site": ""}).json()
        (rec,) = predictor.predict([image], metadata=[OLD])
        assert body["prediction"] == rec["prediction"] and body["uncertainty"] == rec["uncertainty"]
        assert body["metadata"]["used"] == {"age": 80.0, "sex": "male", "site": "back"}
        assert body["prediction"] != none["prediction"] and none["metadata"]["used"] is None
        assert empty["prediction"] == none["prediction"]
        for data, field in (({"age": "abc"}, "'age'"), ({"sex": "x"}, "'sex'")):
            r = c.post("/predict", files=files, data=data)
            assert r.status_code == 422 and r.json()["detail"]["reason"] == "invalid_metadata"
            assert field in r.json()["detail"]["message"] and "the form" in r.json()["detail"]["message"]
        e = c.post("/explain", files=files, data={"age": "80", "sex": "male", "site": "back"})
        assert e.status_code == 200, e.text
        assert e.json()["metadata"]["used"] == body["metadata"]["used"] and e.json()["attention"]["metadata"] == "used"
        assert c.post("/explain", files=files, data={"sex": "x"}).json()["detail"]["reason"] == "invalid_metadata"
        schema = c.get("/openapi.json").json()["components"]["schemas"]
        for route in ("predict", "explain"):
            form = next(v for k, v in schema.items() if k.startswith(f"Body_{route}"))
            assert {"age", "sex", "site"} <= set(form["properties"]) and "file" in form["required"]
            assert "lower extremity" in form["properties"]["site"]["description"]
        assert "metadata" in schema["PredictResponse"]["properties"] and "invalid_metadata" in json.dumps(c.get("/openapi.json").json())
    rows = audit.rows()
    assert json.loads(rows[1]["outputs_json"])["metadata"]["used"] == {"age": 80.0, "sex": "male", "site": "back"}


def test_service_refuses_metadata_the_engine_cannot_use(image_only_engine: Predictor) -> None:
    files = {"file": ("lesion.png", _png(_images(1)[0]), "image/png")}
    with TestClient(create_app(image_only_engine, audit=None)) as c:
        r = c.post("/predict", files=files, data={"age": "80"})
        assert r.status_code == 422 and r.json()["detail"]["reason"] == "metadata_unsupported_by_engine"
        assert "--engine torch" in r.json()["detail"]["message"]
        assert c.post("/predict", files=files).status_code == 200
