"""The without-metadata operating point of bundles with metadata fusion members: fitted by
``calibrate`` on validation with the metadata hidden (cached in validation_no_metadata.npz), chosen
per row by ``predict_from_logits``, checked by ``validate_meta``, evaluated by ``evaluate_bundle``,
shown by the model card and used by ``bench/quality.py``'s ``shipped_no_metadata`` row."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax

from skinlesion.calibration.temperature import mean_nll
from skinlesion.calibration.thresholds import Target
from skinlesion.ensemble import build as build_module
from skinlesion.ensemble.build import _read_logits, calibrate_bundle, load_validation_cache
from skinlesion.ensemble.bundle import (
    VALIDATION_CACHE,
    VALIDATION_NO_METADATA_CACHE,
    WITH_METADATA,
    WITHOUT_METADATA,
    Bundle,
    BundleError,
    load_bundle,
    validate_meta,
    write_meta,
)
from skinlesion.ensemble.predict import member_view_logits
from skinlesion.ensemble.split import load_bundle_split
from skinlesion.evaluation import evaluate_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TARGETS = [Target("MEL", 0.6, 0.5), Target("AKIEC", 0.5, 0.5)]


def _copy(src: Path, tmp_path: Path, name: str = "bundle") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval-*", "bench-cache"))
    return dst


def _set_thresholds(path: Path, main: dict[str, float | None], without: dict[str, float | None]) -> None:
    """Overwrite thresholds of both operating points in bundle.json (the rest of the calibration stays)."""
    meta = json.loads((path / "bundle.json").read_text())
    for c, t in main.items():
        meta["decision"]["thresholds"][c]["threshold"] = t
    for c, t in without.items():
        meta["decision"]["without_metadata"]["thresholds"][c]["threshold"] = t
    write_meta(path, meta)


# -- calibrate --------------------------------------------------------------------------------------
def test_calibrate_fits_the_point_on_validation_with_metadata_hidden(calibrated_fusion_bundle: Path) -> None:
    b = load_bundle(calibrated_fusion_bundle)  # validate_meta accepts what calibrate wrote
    fusion = [m.name for m in b.fusion_members]
    assert fusion == [b.members[0].name] and len(b.members) == 2
    point = b.meta["decision"]["without_metadata"]
    assert point["fitted_on"] == "val, metadata hidden"
    assert point["temperature"]["mode"] == "ensemble" and point["temperature"]["ensemble"] > 0
    assert set(point["thresholds"]) == {"MEL", "AKIEC"}
    for t in TARGETS:  # the same targets and options as the main point
        ch, main = point["thresholds"][t.cls], b.meta["decision"]["thresholds"][t.cls]
        assert (ch["target_sensitivity"], ch["target_specificity"]) == (t.sensitivity, t.specificity)
        assert (ch["confidence"], ch["bound"]) == (main["confidence"], main["bound"])
    assert set(point["validation"]) >= {"bacc", "malignant_bacc", "per_class"}
    assert set(point["validation"]["per_class"]["MEL"]) == {"sensitivity", "specificity"}

    # the cache: same images and layout as validation.npz; the fusion member's logits moved, the image-only's did not
    logits, y, _ = load_validation_cache(b)
    with np.load(b.path / VALIDATION_CACHE) as v, np.load(b.path / VALIDATION_NO_METADATA_CACHE) as h:
        assert (h["image_id"] == v["image_id"]).all() and (h["y"] == v["y"]).all()
        assert [str(n) for n in h["members"]] == [m.name for m in b.members]
        hidden = _read_logits(h, 2)
        assert list(h["weights_sha256"]) == [m.meta["weights_sha256"] for m in b.members]
    assert hidden[0].shape == logits[0].shape and np.abs(hidden[0] - logits[0]).max() > 1e-4
    np.testing.assert_array_equal(hidden[1], logits[1])

    # the temperature calibrates the hidden-metadata logits at least as well as the main one does
    uncal = b.log_probs(hidden, calibrated=False)
    def nll(t: float) -> float:
        return mean_nll(log_softmax(uncal / t, axis=1), y)

    assert nll(point["temperature"]["ensemble"]) <= nll(b.ensemble_temperature) + 1e-9
    # the thresholds' validation rates are those of the hidden-metadata probabilities (point estimates)
    p = np.exp(b.log_probs(hidden, operating_point=WITHOUT_METADATA))
    for c in ("MEL", "AKIEC"):
        j, ch = b.classes.index(c), point["thresholds"][c]
        if ch["threshold"] is not None:
            hit = p[:, j] >= ch["threshold"]
            assert ch["sensitivity"] == pytest.approx(hit[y == j].mean())
            assert ch["specificity"] == pytest.approx((~hit[y != j]).mean())


def test_calibrate_reuses_a_matching_cache_and_recomputes_a_stale_one(
    calibrated_fusion_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _copy(calibrated_fusion_bundle, tmp_path)
    before = json.loads((path / "bundle.json").read_text())["decision"]["without_metadata"]
    calls: list[str] = []
    real = build_module.member_view_logits

    def counting(member: Any, *a: Any, **kw: Any) -> np.ndarray:
        calls.append(member.name)
        assert kw.get("use_metadata") is False
        return real(member, *a, **kw)

    monkeypatch.setattr(build_module, "member_view_logits", counting)
    again = calibrate_bundle(path, TARGETS, confidence=None)
    assert calls == []  # read back from validation_no_metadata.npz
    assert again["without_metadata"]["thresholds"] == before["thresholds"]
    t_again, t_before = again["without_metadata"]["temperature"], before["temperature"]
    assert t_again["ensemble"] == pytest.approx(t_before["ensemble"]) and t_again["bias"] == pytest.approx(t_before["bias"])

    with np.load(path / VALIDATION_NO_METADATA_CACHE) as z:  # written for other weights: stale
        arrays = {k: z[k] for k in z.files}
    arrays["weights_sha256"] = np.asarray(["0" * 64, arrays["weights_sha256"][1]])
    np.savez_compressed(path / VALIDATION_NO_METADATA_CACHE, **arrays)
    calibrate_bundle(path, TARGETS, confidence=None)
    fusion = load_bundle(path).fusion_members[0].name
    assert calls == [fusion]  # only the fusion member reruns
    with np.load(path / VALIDATION_NO_METADATA_CACHE) as z:
        assert str(z["weights_sha256"][0]) != "0" * 64


def _rewrite(path: Path, **changes: Any) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(path, **{**arrays, **changes})


def test_caches_computed_at_another_input_size_are_not_reused(
    calibrated_fusion_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caches record each member's input size: logits of another test-time size are stale."""
    path = _copy(calibrated_fusion_bundle, tmp_path)
    b = load_bundle(path)
    sizes = [list(m.input_size) for m in b.members]
    for name in (VALIDATION_CACHE, VALIDATION_NO_METADATA_CACHE):
        with np.load(path / name) as z:
            assert z["input_size"].tolist() == sizes
    calls: list[str] = []
    real = build_module.member_view_logits
    monkeypatch.setattr(build_module, "member_view_logits", lambda m, *a, **kw: calls.append(m.name) or real(m, *a, **kw))
    other = np.asarray([[h + 8, w + 8] for h, w in sizes])
    _rewrite(path / VALIDATION_NO_METADATA_CACHE, input_size=other)
    calibrate_bundle(path, TARGETS, confidence=None)
    assert calls == [b.fusion_members[0].name]  # recomputed at the bundle's size, and rewritten with it
    with np.load(path / VALIDATION_NO_METADATA_CACHE) as z:
        assert z["input_size"].tolist() == sizes
    _rewrite(path / VALIDATION_CACHE, input_size=other)
    with pytest.raises(BundleError, match=r"computed for input sizes \(H, W\) .* \(the bundle feeds .*\)\. Rebuild the bundle .*--input-size"):
        load_validation_cache(load_bundle(path))
    with np.load(path / VALIDATION_CACHE) as z:
        legacy = {k: z[k] for k in z.files if k != "input_size"}
    np.savez_compressed(path / VALIDATION_CACHE, **legacy)  # written before sizes were recorded: taken as it is
    assert len(load_validation_cache(load_bundle(path))[0]) == len(sizes)


def test_image_only_bundles_get_no_without_metadata_point(tiny_bundle: Path, tmp_path: Path) -> None:
    path = _copy(tiny_bundle, tmp_path)
    decision = calibrate_bundle(path, TARGETS, confidence=None)
    assert "without_metadata" not in decision
    assert "without_metadata" not in json.loads((path / "bundle.json").read_text())["decision"]
    assert not (path / VALIDATION_NO_METADATA_CACHE).exists()


# -- predict_from_logits ------------------------------------------------------------------------------
def _two_point_bundle(path: Path, *, without: bool = True) -> Bundle:
    """The calibrated fusion bundle with MEL threshold 0.9 (with metadata) and 0.1 (without), no AKIEC
    threshold, main temperature 1 and a without-metadata temperature twice it (no class biases)."""
    b = load_bundle(path)
    meta = copy.deepcopy(b.meta)
    meta["temperature"].pop("bias", None)
    meta["temperature"]["ensemble"] = 1.0
    meta["decision"]["without_metadata"]["temperature"].pop("bias", None)
    meta["decision"]["thresholds"]["MEL"]["threshold"] = 0.9
    meta["decision"]["thresholds"]["AKIEC"]["threshold"] = None
    if without:
        point = meta["decision"]["without_metadata"]
        point["thresholds"]["MEL"]["threshold"] = 0.1
        point["thresholds"]["AKIEC"]["threshold"] = None
        point["temperature"]["ensemble"] = 2.0 * meta["temperature"]["ensemble"]
    else:
        del meta["decision"]["without_metadata"]
    validate_meta(meta)
    return Bundle(None, meta, b.members)


def _logits(b: Bundle, n: int = 4) -> list[np.ndarray]:
    """View logits where MEL has about 0.5 probability and NV is the most probable other class."""
    k = len(b.classes)
    z = np.full((n, 2, k), -3.0)
    z[:, :, b.classes.index("MEL")] = 2.0
    z[:, :, b.classes.index("NV")] = 1.5
    return [z.copy() for _ in b.members]


def test_predict_from_logits_picks_the_operating_point_per_row(calibrated_fusion_bundle: Path) -> None:
    b = _two_point_bundle(calibrated_fusion_bundle)
    z = _logits(b)
    mel, nv = b.classes.index("MEL"), b.classes.index("NV")
    given = np.array([True, False, True, False])
    pred = b.predict_from_logits(z, metadata_given=given)
    assert pred.operating_point.tolist() == [WITH_METADATA, WITHOUT_METADATA, WITH_METADATA, WITHOUT_METADATA]
    assert pred.metadata_given.tolist() == given.tolist()
    # with metadata: MEL (p < 0.9) cannot be decided; without: its threshold 0.1 fires
    assert pred.decision.tolist() == [nv, mel, nv, mel]
    assert pred.fired.tolist() == [-1, mel, -1, mel]
    # each row has its point's temperature: the main one, or twice it (flatter probabilities)
    main = np.exp(b.log_probs(z))
    flat = np.exp(b.log_probs(z, operating_point=WITHOUT_METADATA))
    np.testing.assert_allclose(pred.probs[given], main[given])
    np.testing.assert_allclose(pred.probs[~given], flat[~given])
    assert flat[0, mel] < main[0, mel]

    everyone = b.predict_from_logits(z)  # None: all given, today's behaviour
    assert everyone.decision.tolist() == [nv] * 4 and set(everyone.operating_point) == {WITH_METADATA}
    nobody = b.predict_from_logits(z, metadata_given=False)
    assert nobody.decision.tolist() == [mel] * 4 and set(nobody.operating_point) == {WITHOUT_METADATA}
    assert b.decide(main)[0].tolist() == [nv] * 4 and b.decide(main, operating_point=WITHOUT_METADATA)[0].tolist() == [mel] * 4
    with pytest.raises(ValueError, match=r"'metadata_given' parameter must be a bool or a bool array of shape \(4,\)"):
        b.predict_from_logits(z, metadata_given=np.array([True, False]))
    with pytest.raises(ValueError, match="'operating_point' parameter must be one of"):
        b.log_probs(z, operating_point="no_metadata")


def test_a_bundle_without_the_point_keeps_its_one_point_for_every_row(calibrated_fusion_bundle: Path) -> None:
    b = _two_point_bundle(calibrated_fusion_bundle, without=False)
    z = _logits(b)
    pred = b.predict_from_logits(z, metadata_given=np.array([True, False, False, True]))
    assert set(pred.operating_point) == {WITH_METADATA}
    assert pred.metadata_given.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(pred.decision, b.predict_from_logits(z).decision)
    np.testing.assert_allclose(pred.probs, np.exp(b.log_probs(z)))
    assert b.resolve_operating_point(WITHOUT_METADATA) == WITH_METADATA
    assert b.thresholds_for(WITHOUT_METADATA) == b.thresholds


def test_metadata_given_counts_values_that_reach_the_fusion_members(
    calibrated_fusion_bundle: Path, calibrated_bundle: Path
) -> None:
    b = load_bundle(calibrated_fusion_bundle)
    records = [None, {}, {"age": 50}, {"site": "elbow"}, {"sex": "unknown", "site": ""}, {"sex": "female"}]
    # an unknown site is encoded as missing: the members see what they see without metadata
    assert b.metadata_given(records, 6).tolist() == [False, False, True, False, False, True]
    assert b.metadata_given(None, 3).tolist() == [False] * 3
    assert load_bundle(calibrated_bundle).metadata_given([{"age": 50}], 1).tolist() == [False]  # no fusion member


# -- validate_meta ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p.update(temperature={"mode": "ensemble", "ensemble": -1.0}),
         r"decision\.without_metadata\.temperature\.ensemble must be > 0"),
        (lambda p: p.update(temperature={"mode": "none"}),
         r"decision\.without_metadata\.temperature\.mode must be the bundle's temperature\.mode 'ensemble'"),
        (lambda p: p.pop("thresholds"), r"decision\.without_metadata lacks field\(s\) \['thresholds'\]"),
        (lambda p: p["thresholds"]["MEL"].update(threshold=1.5),
         r"decision\.without_metadata\.thresholds\.MEL\.threshold must be a probability or null, got 1\.5"),
        (lambda p: p["thresholds"].update(XYZ={"threshold": 0.5}),
         r"decision\.without_metadata\.thresholds name unknown class\(es\) \['XYZ'\]"),
    ],
)
def test_validate_meta_names_the_malformed_field(calibrated_fusion_bundle: Path, tmp_path: Path, change: Any, match: str) -> None:
    meta = json.loads((calibrated_fusion_bundle / "bundle.json").read_text())
    change(meta["decision"]["without_metadata"])
    with pytest.raises(BundleError, match=match):
        validate_meta(meta)
    path = _copy(calibrated_fusion_bundle, tmp_path)
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"bundle.json: {match}"):
        load_bundle(path)


def test_validate_meta_rejects_a_point_that_is_not_a_dict(calibrated_fusion_bundle: Path) -> None:
    meta = json.loads((calibrated_fusion_bundle / "bundle.json").read_text())
    meta["decision"]["without_metadata"] = 0.5
    with pytest.raises(BundleError, match=r"decision\.without_metadata must be a dict with 'temperature' and 'thresholds'"):
        validate_meta(meta)


# -- evaluate, model card, bench ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(calibrated_fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A copy whose MEL threshold never fires with metadata (1.0) and always without it (0.0), evaluated on test."""
    path = _copy(calibrated_fusion_bundle, tmp_path_factory.mktemp("evaluated"))
    _set_thresholds(path, {"MEL": 1.0}, {"MEL": 0.0})
    return path, evaluate_bundle(path, split="test", n_boot=5)


def test_evaluate_writes_the_metrics_with_metadata_hidden(evaluated: tuple[Path, dict[str, Any]]) -> None:
    path, result = evaluated
    written = json.loads((path / "eval-test" / "metrics.json").read_text())
    nm = written["without_metadata"]
    assert {"argmax", "decision", "targets", "calibration"} <= set(nm) and nm["operating_point"] == WITHOUT_METADATA
    assert set(nm["decision"]["intervals"]) == set(written["decision"]["intervals"])  # same bootstrap metrics
    assert nm["thresholds"]["MEL"] == 0.0 and nm["calibration"]["temperature"]["ensemble"] == pytest.approx(
        load_bundle(path).meta["decision"]["without_metadata"]["temperature"]["ensemble"]
    )
    # with metadata MEL is never decided; with it hidden, every image is MEL (threshold 0)
    main_mel = written["decision"]["metrics"]["per_class"]["MEL"]
    hidden_mel = nm["decision"]["metrics"]["per_class"]["MEL"]
    assert (main_mel["sensitivity"], main_mel["specificity"]) == (0.0, 1.0)
    assert (hidden_mel["sensitivity"], hidden_mel["specificity"]) == (1.0, 0.0)
    mel_target = next(t for t in nm["targets"] if t["class"] == "MEL")
    assert mel_target["threshold"] == 0.0 and mel_target["sensitivity_met"] and not mel_target["specificity_met"]
    assert mel_target["sensitivity_ci"] is not None
    assert "Metadata hidden" in (path / "eval-test" / "report.html").read_text()
    assert result["without_metadata"]["decision"]["metrics"]["bacc"] == nm["decision"]["metrics"]["bacc"]
    # the hidden-metadata logits came from the same pass as the main ones: equal to a separate pass
    b = load_bundle(path)
    table = load_bundle_split(b, "test")
    with np.load(path / "eval-test" / "view_logits_no_metadata.npz") as z:
        hidden = _read_logits(z, len(b.members))
        assert list(z["image_id"]) == list(table.frame["image_id"].astype(str))
    for m, h in zip(b.members, hidden, strict=True):
        np.testing.assert_allclose(h, member_view_logits(m, table, b.tta.views, use_metadata=False), rtol=1e-5, atol=1e-5)


def test_evaluate_of_an_image_only_bundle_has_no_without_metadata(calibrated_bundle: Path, tmp_path: Path) -> None:
    result = evaluate_bundle(calibrated_bundle, split="test", n_boot=2, out_dir=tmp_path / "eval")
    assert "without_metadata" not in result
    assert "without_metadata" not in json.loads((tmp_path / "eval" / "metrics.json").read_text())


def test_model_card_has_a_without_metadata_section(evaluated: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from skinlesion.model_card import write_model_card

    path, _ = evaluated
    out = tmp_path / "run"
    shutil.copytree(path, out / "bundle", ignore=shutil.ignore_patterns("eval-*"))
    shutil.copytree(path / "eval-test", out / "eval-test")
    (out / "recipe_state.json").write_text(json.dumps({"steps": {}}))
    recipe = SimpleNamespace(evaluate=SimpleNamespace(split="test"), description="t", budget_minutes=1, members=[], baseline=None)
    card = write_model_card(out, recipe, Path("t.yaml")).read_text()
    section = card.split("## Without patient metadata", 1)[1].split("\n## ", 1)[0]
    nm = json.loads((out / "eval-test" / "metrics.json").read_text())["without_metadata"]
    assert f"{nm['decision']['intervals']['bacc']['estimate']:.3f}" in section
    assert "| MEL | 0.0000 |" in section  # the without-metadata threshold
    assert "- MEL (threshold 0.0000): sensitivity 1.000" in section and "NOT met" in section
    assert "AKIEC sensitivity / specificity" in section

    meta = json.loads((out / "bundle" / "bundle.json").read_text())  # a bundle without the point, no metrics: no section
    del meta["decision"]["without_metadata"]
    (out / "bundle" / "bundle.json").write_text(json.dumps(meta))
    shutil.rmtree(out / "eval-test")
    assert "Without patient metadata" not in write_model_card(out, recipe, Path("t.yaml")).read_text()


def test_bench_quality_decides_the_hidden_row_with_the_without_metadata_point(
    evaluated: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import quality

    path, _ = evaluated
    rc = quality.main(["--bundle", str(path), "--baseline", "none", "--n-boot", "3", "--cache-dir", str(tmp_path)])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    shipped, hidden = rows["shipped"], rows["shipped_no_metadata"]
    assert hidden["operating_point"] == WITHOUT_METADATA
    assert hidden["targets"]["MEL"]["threshold"] == 0.0 and shipped["targets"]["MEL"]["threshold"] == 1.0
    assert hidden["calibration"]["temperature"]["ensemble"] != shipped["calibration"]["temperature"]["ensemble"]
    # the thresholds' rule of each point (the shipped rows are the diagnosis, the bundle's policy)
    flags, hidden_flags = rows["priority_threshold"], rows["priority_threshold_no_metadata"]
    assert hidden_flags["operating_point"] == WITHOUT_METADATA
    assert (hidden_flags["per_class"]["MEL"]["sensitivity"], hidden_flags["per_class"]["MEL"]["specificity"]) == (1.0, 0.0)
    assert flags["per_class"]["MEL"]["sensitivity"] == 0.0
