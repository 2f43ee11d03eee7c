"""The shipped HAM10000 sample lesions: few, small, attributed, and all from the test split."""

from __future__ import annotations

import csv
from pathlib import Path

import skinlesion

SAMPLES = Path(skinlesion.__file__).parent / "samples" / "ham10000"
CV_MANIFEST = Path(skinlesion.__file__).parent / "configs" / "splits" / "ham10000-cv5.csv"


def test_samples_are_few_small_and_listed() -> None:
    rows = list(csv.DictReader(open(SAMPLES / "samples.csv")))
    files = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert len(rows) <= 16 and sorted(r["path"] for r in rows) == files
    assert all((SAMPLES / f).stat().st_size <= 30_000 for f in files)
    per_class: dict[str, int] = {}
    for r in rows:
        per_class[r["truth"]] = per_class.get(r["truth"], 0) + 1
    assert set(per_class) == {"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}
    assert all(2 <= n <= 3 for n in per_class.values())
    assert len({r["lesion_id"] for r in rows}) == len(rows)  # one image per lesion


def test_samples_come_from_the_test_split_with_their_labels() -> None:
    manifest = {r["image_id"]: r for r in csv.DictReader(open(CV_MANIFEST))}
    for r in csv.DictReader(open(SAMPLES / "samples.csv")):
        m = manifest[r["image_id"]]
        assert m["split"] == "test", r["image_id"]
        assert m["label"] == r["truth"] and m["lesion_id"] == r["lesion_id"]


def test_samples_carry_attribution_and_licence() -> None:
    text = (SAMPLES / "README.md").read_text()
    assert "CC BY-NC 4.0" in text and "doi:10.1038/sdata.2018.161" in text and "Tschandl" in text


def test_make_run_table_shows_truth_beside_diagnosis_flags_and_review(tmp_path: Path) -> None:
    from skinlesion.delivery.batch import run_predictions
    from skinlesion.delivery.engine import Predictor
    from skinlesion.ensemble.bundle import DEFAULT_BUNDLE, load_bundle, resolve_bundle_path
    from skinlesion.samples import SAMPLES_CSV, summary_rows, summary_table

    predictor = Predictor(load_bundle(resolve_bundle_path(DEFAULT_BUNDLE)), mc_samples=0)
    summary = run_predictions(predictor, [SAMPLES_CSV], tmp_path / "pred", batch_size=8)
    assert summary.done == 16 and not summary.rejected  # every sample is an image the service accepts
    predicted = {r["image"]: r for r in csv.DictReader(open(tmp_path / "pred" / "predictions.csv"))}
    truth = {r["image_id"]: r["truth"] for r in csv.DictReader(open(SAMPLES_CSV))}
    rows = summary_rows(tmp_path / "pred")
    assert sorted(r["image"] for r in rows) == sorted(truth)
    for r in rows:
        p = predicted[r["image"]]
        assert r["truth"] == truth[r["image"]] and r["diagnosis"] == p["diagnosis"]
        assert r["flags"] == (p["flags"] or "-") and r["review"] == "n/a"  # no MC dropout here: no review flag
        assert r["ood"] == ("OUT OF DISTRIBUTION" if p["out_of_distribution"] == "True" else "-")
    right = sum(r["truth"] == r["diagnosis"] for r in rows)
    assert f"{right} of 16 diagnoses match the ground truth" in summary_table(tmp_path / "pred")
