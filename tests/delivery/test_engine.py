"""Predictor: the one prediction path of predict and serve."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from skinlesion.delivery.engine import Predictor, make_engine
from skinlesion.ensemble.bundle import load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(60 + 7 * i, 80, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def predictor(calibrated_bundle: Path) -> Predictor:
    return Predictor(load_bundle(calibrated_bundle), mc_samples=3)


def test_records_follow_the_bundle(predictor: Predictor) -> None:
    images = _images()
    recs = predictor.predict(images)
    pred = predictor.bundle.predict_images(images)
    classes = predictor.bundle.classes
    for i, r in enumerate(recs):
        p = r["prediction"]
        np.testing.assert_allclose([p["probabilities"][c] for c in classes], pred.probs[i], atol=1e-6)
        assert p["decision"] == p["diagnosis"] == classes[pred.diagnosis[i]]  # the default policy
        assert p["threshold_fired"] is None and p["decided_by"].startswith("diagnosis: ")
        (flag,) = p["flags"]
        assert flag["flagged"] == (pred.probs[i, classes.index("MEL")] >= p["thresholds"]["MEL"])
        u = r["uncertainty"]
        assert u["n_samples"] == 3 and isinstance(u["review"]["flag"], bool)
        assert u["predictive_entropy"] == pytest.approx(u["aleatoric_expected_entropy"] + u["epistemic_mutual_information"], abs=1e-6)
        assert r["bundle"]["id"] == predictor.bundle.bundle_id and r["bundle"]["engine"] == "torch"
        assert "not a diagnosis" in r["notice"]


def test_review_flag_matches_the_fitted_threshold(predictor: Predictor) -> None:
    for r in predictor.predict(_images(6)):
        rv = r["uncertainty"]["review"]
        assert rv["flag"] == (rv["value"] >= rv["threshold"])  # mutual information: flag high values


def test_no_uncertainty_when_mc_samples_is_zero(calibrated_bundle: Path) -> None:
    (r,) = Predictor(load_bundle(calibrated_bundle), mc_samples=0).predict(_images(1))
    assert r["uncertainty"] is None
    with pytest.raises(ValueError, match="mc_samples"):
        Predictor(load_bundle(calibrated_bundle), mc_samples=-1)
    with pytest.raises(ValueError, match="engine"):
        make_engine(load_bundle(calibrated_bundle), "tensorrt")


def test_explain_reuses_the_record(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _images(1)[0]
    rec = predictor.predict([image])[0]
    calls = []
    monkeypatch.setattr(predictor, "predict", lambda imgs: calls.append(1) or [rec])
    result, arrays = predictor.explain(image, record=rec)
    assert calls == [] and result["prediction"] == rec["prediction"] and result["uncertainty"] == rec["uncertainty"]
    assert arrays["cam"].shape == image.shape[:2] and arrays["mask"].dtype == bool
    assert result["attention"]["class"] == rec["prediction"]["decision"]


def test_explain_shows_the_backbones_measured_attention_method_by_default(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> None:
    """The web page, reports and batch explain through Predictor.explain: without a method they must get
    the registry's measured default (e.g. Layer-CAM at blocks.4 for Lite), not a fixed Grad-CAM++."""
    import skinlesion.delivery.engine as engine

    seen: list[object] = []
    monkeypatch.setattr(engine, "explain_image", lambda *a, **kw: seen.append(kw["method"]) or ({}, {}))
    image = _images(1)[0]
    rec = predictor.predict([image])[0]
    predictor.explain(image, record=rec)
    predictor.explain(image, record=rec, method="gradcam")
    assert seen == [None, "gradcam"]


def test_concurrent_calls_equal_sequential_ones(predictor: Predictor) -> None:
    images = _images(3)
    expected = [predictor.predict([im])[0]["prediction"]["probabilities"] for im in images]
    cams = [predictor.explain(im)[1]["cam"] for im in images]
    got: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            if i % 2:
                got[i] = predictor.explain(images[i % 3])[1]["cam"]
            else:
                got[i] = predictor.predict([images[i % 3]])[0]["prediction"]["probabilities"]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, v in got.items():
        if i % 2:
            np.testing.assert_allclose(v, cams[i % 3], atol=1e-6)
        else:
            assert v == pytest.approx(expected[i % 3], abs=1e-6)
    assert all(not m.model.training for m in predictor.bundle.members)  # MC dropout restored eval mode


def test_uncertainty_of_an_image_does_not_depend_on_its_batch(predictor: Predictor) -> None:
    images = _images(4)
    together = predictor.predict(images)
    alone = [predictor.predict([im])[0] for im in images]
    for t, a in zip(together, alone, strict=True):
        assert t["uncertainty"]["epistemic_mutual_information"] == pytest.approx(a["uncertainty"]["epistemic_mutual_information"], abs=1e-7)
        assert t["uncertainty"]["review"]["flag"] == a["uncertainty"]["review"]["flag"]
        assert t["uncertainty"]["review"]["value"] == pytest.approx(a["uncertainty"]["review"]["value"], abs=1e-12)
