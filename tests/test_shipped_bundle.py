"""The default bundle that ships inside the package: it loads offline, verifies, documents itself
and classifies. Fails (does not skip) when it is missing: `--bundle default` and `make run` need it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skinlesion.delivery.engine import Predictor
from skinlesion.ensemble.bundle import default_bundle_dir, load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped():  # noqa: ANN201
    path = default_bundle_dir()
    assert (path / "bundle.json").is_file(), f"{path} holds no bundle.json: run `skinlesion recipe package`"
    return load_bundle(path)  # verifies every member's sha256


def test_shipped_bundle_is_complete_and_small(shipped) -> None:  # noqa: ANN001
    path = default_bundle_dir()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 60 * 2**20  # tens of MB in the repository, not hundreds
    assert set(shipped.classes) == {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
    assert len(shipped.members) >= 2 and len(shipped.tta.views) == 8
    assert shipped.thresholds.get("MEL") is not None and shipped.meta.get("review")
    # Fusion members: a second operating point fitted on validation with the metadata hidden.
    assert shipped.fusion_members and shipped.thresholds_for("without_metadata").get("MEL") is not None
    assert (path / "validation_no_metadata.npz").is_file()
    card = (path / "MODEL_CARD.md").read_text()
    for needed in ("CC BY-NC 4.0", "lesion-disjoint", "BACC", "MEL", "AKIEC", "ECE", "Limitations", "Intended use",
                   "Without patient metadata", "Validation BACC after each epoch"):
        assert needed in card, needed


def test_shipped_validation_caches_name_the_weights_and_size_they_were_computed_for(shipped) -> None:  # noqa: ANN001
    """Both cached validation tables (what calibrate refits from) record the members' weights hashes and
    the input size, and match the shipped members (a stale cache would be refused, not used)."""
    from skinlesion.ensemble.build import _cache_ids, _read_no_metadata_cache, load_validation_cache

    for name in ("validation.npz", "validation_no_metadata.npz"):
        with np.load(shipped.path / name) as z:
            assert [str(h) for h in z["weights_sha256"]] == [m.meta["weights_sha256"] for m in shipped.members], name
            assert z["input_size"].tolist() == [list(m.input_size) for m in shipped.members], name
    logits, y, _ = load_validation_cache(shipped)
    hidden = _read_no_metadata_cache(shipped, _cache_ids(shipped)[0])
    assert hidden is not None and len(hidden) == len(logits) == len(shipped.members)
    assert logits[0].shape == hidden[0].shape == (len(y), len(shipped.tta.views), len(shipped.classes))


def test_shipped_bundle_classifies_with_and_without_metadata(shipped) -> None:  # noqa: ANN001
    from skinlesion.data.synthetic import generate_lesion

    image, _, _ = generate_lesion("MEL", seed=3)
    p = Predictor(shipped)  # as `predict` and `serve` run it: the review flag the bundle was fitted with
    (plain,) = p.predict([image])
    (with_meta,) = p.predict([image], metadata=[{"age": 70, "sex": "male", "site": "back"}])
    probs = np.array(list(plain["prediction"]["probabilities"].values()))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and plain["prediction"]["decision"] in shipped.classes
    assert plain["bundle"]["id"] == shipped.bundle_id
    used = with_meta["metadata"]["used"]
    assert used["sex"] == "male" and used["site"] == "back" and float(used["age"]) == 70.0
    assert with_meta["prediction"]["probabilities"] != plain["prediction"]["probabilities"]  # fusion members use it
    assert json.dumps(with_meta)  # JSON-ready
    # Each image is decided by the operating point that matches what its fusion members received.
    assert plain["prediction"]["operating_point_name"] == "without_metadata"
    assert with_meta["prediction"]["operating_point_name"] == "with_metadata"
    assert plain["prediction"]["thresholds"] == shipped.thresholds_for("without_metadata")
    # ... and flagged for review by the threshold fitted the same way (with the metadata hidden, or not).
    review = shipped.meta["review"]
    assert plain["uncertainty"]["review"]["operating_point"] == "without_metadata"
    assert plain["uncertainty"]["review"]["threshold"] == review["without_metadata"]["threshold"]
    assert with_meta["uncertainty"]["review"]["threshold"] == review["threshold"]


def test_shipped_bundle_runs_on_onnx_runtime_by_default(shipped) -> None:  # noqa: ANN001
    """`predict` and `serve` get the fastest engine without asking: the bundle ships shared-weight
    ONNX graphs (kB each, the members' weights filled in when loaded) that match PyTorch."""
    from skinlesion.data.synthetic import generate_lesion
    from skinlesion.delivery.onnx_runtime import read_manifest

    onnx_dir = default_bundle_dir() / "onnx"
    manifest = read_manifest(onnx_dir)
    assert {m["weights"] for m in manifest["members"]} == {"member"}
    assert sum(f.stat().st_size for f in onnx_dir.iterdir()) < 5 * 2**20
    fast = Predictor(shipped, mc_samples=0)
    assert fast.engine_name == "onnx-fp32", fast.engine_choice
    images = [generate_lesion(c, seed=i)[0] for i, c in enumerate(("MEL", "NV"))]
    meta = [{"age": 70, "sex": "male", "site": "back"}, None]
    got = fast.predict(images, metadata=meta)
    want = Predictor(shipped, "torch", mc_samples=0, device="cpu").predict(images, metadata=meta)
    for g, w in zip(got, want, strict=True):
        assert g["prediction"]["decision"] == w["prediction"]["decision"]
        pg, pw = g["prediction"]["probabilities"], w["prediction"]["probabilities"]
        assert max(abs(pg[c] - pw[c]) for c in pg) < 1e-4
