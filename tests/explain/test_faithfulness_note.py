"""The measured-faithfulness line of the report and web page (skinlesion.explain.faithfulness_note)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from skinlesion.explain.faithfulness_note import (
    MEASURED_FILE,
    entry_from_comparison,
    faithfulness_note,
    write_entries,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stat(mean: float, ref: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "reference": ref, "difference": mean - ref, "ci_low": lo, "ci_high": hi, "p_value": 0.01, "n": 200}


def _entry(weights: list[str], passes: bool = True, config: str = "layercam@blocks.4+bn2") -> dict:
    dele = _stat(0.20, 0.30, -0.12, -0.08) if passes else _stat(0.31, 0.30, -0.01, 0.03)
    return {
        "bundle": "bundle 'default'", "weights_sha256": weights, "backbones": ["tf_efficientnet_lite0"],
        "config": config, "split": "test", "n": 200, "n_lesions": 200, "passes": passes, "deletion": dele,
        "insertion": _stat(0.50, 0.40, 0.08, 0.12), "mass_in_bbox": _stat(0.45, 0.38, 0.05, 0.09),
        "mass_in_segmentation": _stat(0.30, 0.22, 0.06, 0.10), "source": "bench/results/faithfulness_x.json",
    }


def _bundle(*hashes: str, backbone: str = "tf_efficientnet_lite0", meta: dict | None = None,
            size: list[int] | None = None) -> SimpleNamespace:
    pre = {"input_size": [120, 160]} if size is None else {"input_size": size, "trained_input_size": [120, 160]}
    members = [SimpleNamespace(meta={"weights_sha256": h}, backbone=backbone, preprocessing=pre) for h in hashes]
    return SimpleNamespace(members=members, meta=meta or {})


@pytest.fixture
def measured(tmp_path: Path) -> Path:
    path = tmp_path / "measured.json"
    write_entries([_entry(["a", "b"]), _entry(["c"], passes=False)], path)
    return path


def test_a_map_measured_on_these_weights_states_its_numbers(measured: Path) -> None:
    note = faithfulness_note(_bundle("b", "a"), "layercam@blocks.4+bn2", measured)
    assert note["measured"] and note["beats_random"] and note["scope"] == "measured on this bundle's members"
    line = note["line"]
    assert "Layer-CAM at blocks.4 + bn2" in line and "200 lesions" in line
    assert "deletion AUC 0.200 vs 0.300" in line and "-0.100, 95% CI -0.120 to -0.080" in line
    assert "insertion AUC 0.500 vs 0.400" in line and "45% of the map inside the reference lesion box vs 38%" in line
    assert "beats random maps on deletion and insertion" in line and "NOT" not in line
    assert "bench/results/faithfulness_x.json" in line


def test_a_failure_is_said_plainly(measured: Path) -> None:
    note = faithfulness_note(_bundle("c"), "layercam@blocks.4+bn2", measured)
    assert note["measured"] and note["beats_random"] is False
    assert "NOT shown to beat chance on: deletion" in note["line"] and "insertion," not in note["line"]


def test_another_bundle_of_the_same_backbone_is_named_as_such(measured: Path) -> None:
    note = faithfulness_note(_bundle("z"), "layercam@blocks.4+bn2", measured)
    assert note["measured"] and "not on this bundle" in note["scope"] and "not on this bundle" in note["line"]


def test_the_same_weights_at_another_input_size_are_named_as_such(measured: Path) -> None:
    resized = _bundle("a", "b", size=[144, 192])  # the entry (no input_sizes) was measured at the training size
    note = faithfulness_note(resized, "layercam@blocks.4+bn2", measured)
    assert note["measured"] and note["scope"] == (
        "measured on this bundle's members at input 120x160/120x160, not at the 144x192/144x192 this bundle predicts at")
    assert note["scope"] in note["line"]
    result = {"summary": {"layercam@blocks.4+bn2": {**_entry(["x"]), "passes": True}}, "split": "test", "n": 200,
              "n_lesions": 200, "settings": {"steps": 10, "baseline": "blur", "n_random": 2, "random_kind": "smooth",
                                             "seed": 0, "n_boot": 1000}}
    at_size = entry_from_comparison(result, "layercam@blocks.4+bn2", resized, label="resized", source="g.json")
    assert at_size["input_sizes"] == ["144x192", "144x192"]
    write_entries([at_size], measured)  # another size: kept beside the training-size entry
    assert len(json.loads(measured.read_text())["entries"]) == 3
    note = faithfulness_note(resized, "layercam@blocks.4+bn2", measured)
    assert note["scope"] == "measured on this bundle's members" and note["source"] == "g.json"
    assert faithfulness_note(_bundle("a", "b"), "layercam@blocks.4+bn2", measured)["source"] == "bench/results/faithfulness_x.json"


def test_unmeasured_maps_are_called_unverified(measured: Path) -> None:
    for bundle, config in ((_bundle("a", "b"), "gradcam++@bn2"), (_bundle("a", backbone="resnet18"), "layercam@blocks.4+bn2")):
        note = faithfulness_note(bundle, config, measured)
        assert not note["measured"] and note["beats_random"] is None
        assert "has not been measured" in note["line"] and "unverified" in note["line"]


def test_the_bundles_own_entries_come_first(measured: Path) -> None:
    own = _entry(["a", "b"], passes=False)
    note = faithfulness_note(_bundle("a", "b", meta={"attention_faithfulness": [own]}), "layercam@blocks.4+bn2", measured)
    assert note["beats_random"] is False


def test_write_entries_replaces_the_same_weights_and_config(measured: Path) -> None:
    write_entries([_entry(["b", "a"], passes=False)], measured)
    entries = json.loads(measured.read_text())["entries"]
    assert len(entries) == 2 and sum(e["passes"] for e in entries) == 0


def test_entry_from_a_comparison_keeps_the_numbers() -> None:
    s = {"deletion": _stat(0.2, 0.3, -0.12, -0.08), "insertion": _stat(0.5, 0.4, 0.08, 0.12),
         "mass_in_bbox": _stat(0.45, 0.38, 0.05, 0.09), "mass_in_segmentation": _stat(0.3, 0.22, 0.06, 0.1), "passes": True}
    result = {"summary": {"gradcam++@bn2": s}, "split": "test", "n": 200, "n_lesions": 200,
              "settings": {"steps": 10, "baseline": "blur", "n_random": 2, "random_kind": "smooth", "seed": 0, "n_boot": 1000}}
    e = entry_from_comparison(result, "gradcam++@bn2", _bundle("x"), label="bundle 'default'", source="f.json")
    assert e["weights_sha256"] == ["x"] and e["deletion"]["ci_high"] == -0.08 and e["passes"]
    with pytest.raises(ValueError, match=r"'config' parameter must be one of the compared configurations"):
        entry_from_comparison(result, "layercam@bn2", _bundle("x"), label="b", source="f.json")


def test_the_packaged_file_has_the_lite0_default() -> None:
    from skinlesion.explain.faithfulness_note import config_name
    from skinlesion.models.registry import get_spec

    spec = get_spec("tf_efficientnet_lite0")
    entries = json.loads(MEASURED_FILE.read_text())["entries"]
    chosen = [e for e in entries if e["config"] == config_name(spec.cam_method, spec.cam_layers)]
    assert chosen and all(e["n_lesions"] >= 200 and e["split"] == "test" for e in chosen)


def test_report_and_explanation_carry_the_line(tiny_bundle: Path) -> None:
    from skinlesion.data.synthetic import generate_lesion
    from skinlesion.delivery.report import render_report
    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.explain.pipeline import explain_image

    bundle = load_bundle(tiny_bundle)
    image, _, _ = generate_lesion("MEL", 3, size=(64, 80), hair=False, vignette=False)
    result, arrays = explain_image(bundle, image, mc_samples=0, concepts=False)
    att = result["attention"]
    assert att["faithfulness"]["measured"] is False and "has not been measured" in att["faithfulness"]["line"]
    assert att["faithfulness"]["line"] in render_report(result, image, arrays)

    measured = copy.copy(bundle)
    weights = [m.meta["weights_sha256"] for m in bundle.members]
    config = "gradcam++"  # the tiny backbones' registry default (their own layers differ: no '@')
    cfg_name = f"{att['method']}@{'+'.join(att['layers'])}"
    entry = _entry(weights, config=cfg_name) | {"backbones": sorted({m.backbone for m in bundle.members})}
    measured.meta = {**bundle.meta, "attention_faithfulness": [entry]}
    result, arrays = explain_image(measured, image, mc_samples=0, concepts=False)
    line = result["attention"]["faithfulness"]["line"]
    assert config in result["attention"]["method"] and "deletion AUC 0.200 vs 0.300" in line
    html = render_report(result, image, arrays)
    assert "deletion AUC 0.200 vs 0.300" in html and "measured on this bundle&#x27;s members" in html
    assert np.asarray(arrays["cam"]).shape == image.shape[:2]


def test_web_page_shows_the_line() -> None:
    static = Path(__import__("skinlesion").__file__).parent / "delivery" / "static"
    assert 'id="cam-faithfulness"' in (static / "index.html").read_text()
    assert '$("cam-faithfulness").textContent = (att.faithfulness && att.faithfulness.line)' in (static / "app.js").read_text()


def test_a_class_with_its_own_stratum_gets_its_own_sentence(tmp_path: Path) -> None:
    """A map explaining NV (deletion worse than random among NV predictions) says so, even when the
    pooled figure passes; a class without a stratum falls in 'other classes'; no class, no sentence."""
    entry = _entry(["a"])
    entry["by_prediction"] = {
        "NV": {"n": 150, "deletion": _stat(0.80, 0.77, 0.01, 0.04), "insertion": _stat(0.6, 0.55, 0.03, 0.06)},
        "other classes": {"n": 50, "deletion": _stat(0.3, 0.43, -0.17, -0.09), "insertion": _stat(0.6, 0.5, 0.05, 0.15)},
    }
    path = tmp_path / "m.json"
    write_entries([entry], path)
    nv = faithfulness_note(_bundle("a"), "layercam@blocks.4+bn2", path, class_name="NV")
    assert "For the 150 images predicted NV: deletion +0.030" in nv["line"]
    assert "it does NOT beat random maps on deletion." in nv["line"]
    assert nv["for_class"]["stratum"] == "NV" and nv["for_class"]["beats_random"] is False and nv["beats_random"]
    mel = faithfulness_note(_bundle("a"), "layercam@blocks.4+bn2", path, class_name="MEL")
    assert "For the 50 images predicted as classes without their own stratum" in mel["line"]
    assert mel["for_class"]["beats_random"] and "it beats random maps on both" in mel["line"]
    plain = faithfulness_note(_bundle("a"), "layercam@blocks.4+bn2", path)
    assert plain["for_class"] is None and "For the" not in plain["line"]


def test_the_comparison_summary_splits_by_predicted_class() -> None:
    from skinlesion.explain.faithfulness_compare import MIN_STRATUM, summarise_records

    rng = np.random.default_rng(0)
    records = []
    for i in range(MIN_STRATUM + 10):
        nv = i < MIN_STRATUM
        records.append({
            "lesion_id": f"L{i}", "predicted": "NV" if nv else ("MEL" if i % 2 else "BCC"),
            "random_deletion_auc": 0.5, "random_insertion_auc": 0.5,
            "configs": {"c": {"deletion_auc": 0.52 + 0.01 * rng.random() if nv else 0.3 + 0.01 * rng.random(),
                              "insertion_auc": 0.6, "mass_in_bbox": 0.5, "bbox_fraction": 0.3,
                              "mass_in_segmentation": 0.4, "segmentation_fraction": 0.2, "seconds_cam": 0.1}},
        })
    by = summarise_records(records, n_boot=200)["c"]["by_prediction"]
    assert set(by) == {"NV", "other classes"} and by["NV"]["n"] == MIN_STRATUM and by["other classes"]["n"] == 10
    assert by["NV"]["deletion"]["ci_low"] > 0 > by["other classes"]["deletion"]["ci_high"]
