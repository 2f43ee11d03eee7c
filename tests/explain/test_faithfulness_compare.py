"""Comparing attention-map configurations on the same images (skinlesion.explain.faithfulness_compare)
and bench/faithfulness.py --compare, on the session's tiny two-member bundle of synthetic lesions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skinlesion.explain.faithfulness_compare import CamConfig, choose, compare_configurations, parse_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = {"n": 5, "steps": 4, "n_random": 2, "n_boot": 50}
CONFIGS = ["gradcam++", "layercam", "gradcam;views=flips"]


@pytest.fixture(scope="module")
def comparison(tiny_bundle: Path) -> dict:
    return compare_configurations(tiny_bundle, CONFIGS, **FAST)


def test_every_configuration_is_scored_on_the_same_images(comparison: dict) -> None:
    assert comparison["n"] == comparison["n_lesions"] == len(comparison["records"]) == 5
    assert list(comparison["summary"]) == [parse_config(c).name for c in CONFIGS] == ["gradcam++", "layercam", "gradcam;views=identity,hflip,vflip"]
    assert comparison["reference"] == "gradcam++"
    for rec in comparison["records"]:
        assert set(rec["configs"]) == set(comparison["summary"])
    refs = {s["deletion"]["reference"] for s in comparison["summary"].values()}
    assert len(refs) == 1  # one set of random maps per image, shared by all configurations
    assert comparison["masks"]["bbox"] == 5  # synthetic_truth.csv boxes


def test_differences_are_paired_and_passes_follows_the_intervals(comparison: dict) -> None:
    recs = comparison["records"]
    for name, s in comparison["summary"].items():
        own = np.array([r["configs"][name]["deletion_auc"] for r in recs])
        rnd = np.array([r["random_deletion_auc"] for r in recs])
        assert s["deletion"]["difference"] == pytest.approx(float(np.mean(own - rnd)))
        assert s["deletion"]["ci_low"] <= s["deletion"]["difference"] <= s["deletion"]["ci_high"]
        expected = (s["deletion"]["ci_high"] < 0 and s["insertion"]["ci_low"] > 0
                    and s["mass_in_bbox"]["ci_low"] > 0 and s["mass_in_segmentation"]["ci_low"] > 0)
        assert s["passes"] == expected
        assert ("vs_reference" in s) == (name != "gradcam++")
    ref = np.array([r["configs"]["gradcam++"]["insertion_auc"] for r in recs])
    lay = np.array([r["configs"]["layercam"]["insertion_auc"] for r in recs])
    assert comparison["summary"]["layercam"]["vs_reference"]["insertion"]["difference"] == pytest.approx(float(np.mean(lay - ref)))
    assert comparison["chosen"] is None or comparison["summary"][comparison["chosen"]]["passes"]


def test_choose_takes_the_passing_configuration_with_the_largest_gain() -> None:
    summary = {"a": {"passes": True, "gain": 0.1}, "b": {"passes": False, "gain": 0.5}, "c": {"passes": True, "gain": 0.2}}
    assert choose(summary) == "c"
    assert choose({"a": {"passes": False, "gain": 0.3}}) is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gradcam++@bn2", CamConfig("gradcam++", ("bn2",))),
        ("layercam@blocks.4+bn2;views=flips", CamConfig("layercam", ("blocks.4", "bn2"), ("identity", "hflip", "vflip"))),
        ("default;scale=2", CamConfig(None, None, ("identity",), 2.0)),
    ],
)
def test_specs_round_trip(spec: str, expected: CamConfig) -> None:
    assert parse_config(spec) == expected
    assert parse_config(expected.name) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("scorecam@bn2", r"'method' parameter must be one of"),
        ("gradcam@bn2+", r"empty layer name"),
        ("gradcam;scale=9", r"scale must be a number in \[1, 4\]. Got '9'"),
        ("gradcam;zoom=2", r"unknown option 'zoom'"),
    ],
)
def test_bad_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(spec)


def test_the_same_configuration_twice_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(ValueError, match=r"same configuration twice"):
        compare_configurations(tiny_bundle, ["gradcam", "gradcam;views=identity"], **FAST)


def test_bench_compare_prints_and_writes_json(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.faithfulness import main

    out = tmp_path / "cmp.json"
    code = main([str(tiny_bundle), "--n", "3", "--steps", "3", "--n-random", "2", "--n-boot", "20",
                 "--compare", "gradcam++", "eigencam", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["bench"] == "faithfulness-compare" and list(printed["summary"]) == ["gradcam++", "eigencam"]
    assert "records" not in printed
    assert main([str(tiny_bundle), "--compare", "gradcam;bogus=1"]) == 2
