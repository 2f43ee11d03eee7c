"""The decision outputs of a record, each for its reader: diagnosis (fitted for balanced accuracy),
class flags (independent of the diagnosis), referral, the policy's decision and the OOD gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skinlesion.calibration.referral import malignant_probability
from skinlesion.calibration.thresholds import Target
from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.engine import Predictor
from skinlesion.ensemble.build import calibrate_bundle
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.records import record_columns
from skinlesion.records.ood import WARNING

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 6) -> list[np.ndarray]:
    classes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "VASC"]
    return [generate_lesion(classes[i % 6], seed=40 + i, size=(48, 64), hair=False, vignette=False)[0] for i in range(n)]


def test_records_give_diagnosis_flags_referral_and_gate(calibrated_bundle: Path) -> None:
    bundle = load_bundle(calibrated_bundle)
    spec = bundle.meta["decision"]
    assert spec["policy"] == "diagnosis" and set(spec["diagnosis"]["log_weights"]) == set(bundle.classes)
    assert spec["referral"]["malignant_classes"] == [c for c in bundle.classes if c in {"MEL", "BCC", "AKIEC", "SCC"}]
    images = _images()
    blank = np.full((48, 64, 3), 200, np.uint8)
    records = Predictor(bundle, mc_samples=0).predict([*images, blank])
    weights = bundle.diagnosis_weights()
    t_mel = spec["thresholds"]["MEL"]["threshold"]
    for rec in records:
        p = rec["prediction"]
        probs = np.array([p["probabilities"][c] for c in bundle.classes])
        assert p["diagnosis"] == bundle.classes[int(np.argmax(np.log(probs) + weights))]
        assert p["decision"] == p["diagnosis"] and p["policy"] == "diagnosis" and p["threshold_fired"] is None
        (flag,) = p["flags"]  # MEL is the only thresholded class
        assert flag["class_name"] == "MEL" and flag["flagged"] == (probs[0] >= t_mel) and flag["threshold"] == t_mel
        assert flag["text"] == ("melanoma cannot be excluded" if flag["flagged"] else "no melanoma flag (probability below the threshold)")
        ref = p["referral"]
        assert ref is not None
        assert ref["malignant_probability"] == pytest.approx(float(malignant_probability(probs[None], bundle.classes)[0]))
        assert ref["refer"] == (ref["malignant_probability"] >= spec["referral"]["threshold"])
        gate = rec["ood"]
        assert gate is not None and gate["gated"] == (gate["score"] > spec["ood"]["threshold"])
        assert gate["warning"] == (WARNING if gate["gated"] else None)
        cols = record_columns(rec)
        assert cols["diagnosis"] == p["diagnosis"] and cols["flags"] == ("MEL" if flag["flagged"] else "")
        assert cols["out_of_distribution"] == gate["gated"] and cols["refer"] == ref["refer"]
    assert len({r["ood"]["score"] for r in records}) > 1  # type: ignore[index]


def test_a_gated_image_keeps_its_probabilities_and_carries_the_warning(calibrated_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(calibrated_bundle, out)
    meta = json.loads((out / "bundle.json").read_text())
    meta["decision"]["ood"]["threshold"] = -1.0  # every image scores above it
    (out / "bundle.json").write_text(json.dumps(meta))
    images = _images(2)
    gated = Predictor(load_bundle(out), mc_samples=0).predict(images)
    plain = Predictor(load_bundle(calibrated_bundle), mc_samples=0).predict(images)
    for g, p in zip(gated, plain, strict=True):
        assert g["ood"]["gated"] and g["ood"]["warning"] == WARNING  # type: ignore[index]
        assert g["prediction"]["probabilities"] == p["prediction"]["probabilities"]
        assert g["prediction"]["diagnosis"] == p["prediction"]["diagnosis"]


def test_priority_policy_reproduces_the_reference_rule_and_legacy_bundles_load(calibrated_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(calibrated_bundle, out)
    calibrate_bundle(out, [Target("MEL", 0.6, 0.5)], confidence=None, policy="priority-threshold")
    bundle = load_bundle(out)
    assert bundle.meta["decision"]["ood"] == load_bundle(calibrated_bundle).meta["decision"]["ood"]  # kept, not refitted
    images = _images()
    pred = bundle.predict_images(images)
    records = Predictor(bundle, mc_samples=0).predict(images)
    assert [r["prediction"]["decision"] for r in records] == [bundle.classes[int(d)] for d in pred.decision]
    assert all(r["prediction"]["policy"] == "priority-threshold" for r in records)
    fired = [r for r in records if r["prediction"]["threshold_fired"] == "MEL"]
    assert all(r["prediction"]["decision"] == "MEL" for r in fired)
    # a bundle calibrated before the diagnosis, referral and gate existed: argmax diagnosis, no referral, no gate
    meta = json.loads((out / "bundle.json").read_text())
    for key in ("diagnosis", "referral", "ood", "policy"):
        meta["decision"].pop(key)
    (out / "bundle.json").write_text(json.dumps(meta))
    legacy = load_bundle(out)
    rec = Predictor(legacy, mc_samples=0).predict(images[:2])
    assert [r["prediction"]["diagnosis"] for r in rec] == [r["prediction"]["argmax"] for r in rec]
    assert all(r["prediction"]["referral"] is None and r["ood"] is None for r in rec)
    assert rec[0]["prediction"]["diagnosis_rule"].startswith("most probable class (no class weights fitted")


def test_invalid_policy_is_refused(calibrated_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(calibrated_bundle, out)
    with pytest.raises(ValueError, match=r"'policy' parameter must be one of \('diagnosis', 'priority-threshold'\)"):
        calibrate_bundle(out, [Target("MEL", 0.6, 0.5)], confidence=None, policy="melanoma-first")
