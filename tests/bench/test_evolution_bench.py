"""bench/evolution.py on a few real HAM10000 pairs and synthetic pairs (seconds, not results): the JSON's
parts, the rates' intervals, and a second run that reads every pair from the cache."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    rc = importlib.import_module("bench.evolution").main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    return json.loads(out)


def test_false_alarms_detection_and_registration_from_one_run(ham10000_root: Path, tmp_path: Path, capsys) -> None:
    argv = ["--ham-root", str(ham10000_root), "--max-ham-pairs", "4", "--n-synthetic", "1", "--kinds", "none", "growth",
            "--amounts", "1.0", "--cache-dir", str(tmp_path)]
    first = _run(argv, capsys)
    ham = first["ham10000"]
    assert ham["pairs"] == 4 and sum(ham["dx"].values()) == 4
    fa = ham["false_alarms_evaluation_half"]
    assert fa["pairs"] == 2 and set(fa["as_deployed_without_spacings"]) == {"rate", "k", "n", "ci95"}
    lo, hi = fa["as_deployed_without_spacings"]["ci95"]
    assert 0.0 <= lo <= fa["as_deployed_without_spacings"]["rate"] <= hi <= 1.0
    assert set(ham["fitted_rule"]["thresholds"]) == {"growth", "new_colour", "asymmetry"}
    growth = first["synthetic"]["detection"]["growth"]
    assert [a["amount"] for a in growth["amounts"]] == [1.0] and growth["amounts"][0]["true_area_ratio_mean"] == pytest.approx(2.0, rel=0.05)
    assert growth["amounts"][0]["rate"] == 1.0 and growth["smallest_amount_detected_90pct"] == 1.0  # area x2 with spacings known
    assert first["synthetic"]["detection"]["none"]["amounts"][0]["n"] == 3
    reg = first["registration"]
    assert reg["ham10000"]["n"] == 4 and reg["synthetic_by_kind"]["none"]["tre_px"]["median"] < 2.0

    again = _run([*argv, "--reuse"], capsys)  # every pair from the cache: same answers
    assert again["ham10000"] == ham and again["synthetic"] == first["synthetic"]
    assert len((tmp_path / "ham.jsonl").read_text().splitlines()) == 4
