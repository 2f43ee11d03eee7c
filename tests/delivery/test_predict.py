"""The streamed, resumable batch run behind ``skinlesion predict``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.batch import run_predictions
from skinlesion.delivery.csv_io import DETAIL_COLUMNS, read_rows
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.images import ImageLimits, read_image
from skinlesion.delivery.inputs import REJECTED_COLUMNS, BatchError, discover_inputs, image_ids
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.records import NOTICE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor(calibrated_bundle: Path) -> Predictor:
    return Predictor(load_bundle(calibrated_bundle), mc_samples=2)


def lesion(path: Path, seed: int, label: str = "MEL") -> Path:
    """A small synthetic lesion image (JPEG or PNG by suffix)."""
    image, _, _ = generate_lesion(label, seed, size=(48, 64), hair=False, vignette=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else Image.fromarray(image).save(path)
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def by_path(rs: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["path"]: r for r in rs}


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_csv_has_isic_columns_and_follows_the_predictor(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    files = [lesion(src / "a.jpg", 1), lesion(src / "sub" / "b.png", 2, "NV"), lesion(src / "sub" / "deeper" / "c.PNG", 3, "BCC"),
             lesion(src / "d.JPEG", 4, "BKL"), lesion(src / "e.jpg", 5)]
    (src / "sub" / "notes.txt").write_text("clinic notes")
    s = run_predictions(predictor, [src], tmp_path / "out", batch_size=2)
    classes = list(predictor.bundle.classes)
    with (tmp_path / "out" / "predictions.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["image", *classes, *DETAIL_COLUMNS]  # ISIC submission columns first
    got = rows(tmp_path / "out" / "predictions.csv")
    assert sorted(r["image"] for r in got) == ["a", "b", "c", "d", "e"]
    assert {r["path"] for r in got} == {str(p.resolve()) for p in files}  # recursive, extension case ignored
    recs = [predictor.predict([read_image(r["path"])])[0] for r in got]  # each image on its own, whatever the batch
    for r, rec in zip(got, recs, strict=True):  # exactly: the batch does not change a result
        assert r["decision"] == rec["prediction"]["decision"] and r["predictive_entropy"] == format(rec["uncertainty"]["predictive_entropy"], ".9g")
    for r, rec in zip(got, recs, strict=True):
        probs = np.array([float(r[c]) for c in classes])
        assert probs.sum() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(probs, [rec["prediction"]["probabilities"][c] for c in classes], atol=1e-6)
        diagnosis = predictor.bundle.diagnose(probs[None])
        assert r["diagnosis"] == r["decision"] == classes[int(diagnosis[0])] == rec["prediction"]["diagnosis"]
        assert r["threshold_fired"] == "" and r["policy"] == "diagnosis"
        mel = probs[classes.index("MEL")] >= predictor.bundle.thresholds["MEL"]
        assert r["flags"] == ("MEL" if mel else "")
        assert r["refer"] == str(rec["prediction"]["referral"]["refer"])
        assert r["out_of_distribution"] == str(rec["ood"]["gated"])
        assert r["decided_by"] == rec["prediction"]["decided_by"] and r["argmax"] == classes[int(probs.argmax())]
        review = rec["uncertainty"]["review"]
        assert r["review_flag"] == str(review["flag"]) and r["review_score_name"] == review["score"]
        assert float(r["review_value"]) == pytest.approx(review["value"], abs=1e-6)
        assert float(r["epistemic_mutual_information"]) == pytest.approx(rec["uncertainty"]["epistemic_mutual_information"], abs=1e-6)
        assert r["bundle_id"] == predictor.bundle.bundle_id and r["engine"] == "torch" and r["report"] == ""
        assert len(r["input_sha256"]) == 64
    rej = rows(tmp_path / "out" / "rejected.csv")
    assert [(Path(r["path"]).name, r["reason"]) for r in rej] == [("notes.txt", "not_an_image")]
    assert ".txt" in rej[0]["detail"]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "complete" and run["bundle_id"] == predictor.bundle.bundle_id and run["engine"] == "torch"
    assert run["counts"] == {"inputs": 6, "done": 5, "skipped_already_done": 0, "rejected": 1, "duplicates_ignored": 0}
    assert run["images_per_s"] > 0 and s.done == 5


def test_csv_list_of_paths(predictor: Predictor, tmp_path: Path) -> None:
    lesion(tmp_path / "imgs" / "x1.jpg", 1)
    lesion(tmp_path / "elsewhere" / "x2.png", 2)
    lst = tmp_path / "lists" / "paths.csv"
    lst.parent.mkdir()
    lst.write_text(f"image_path,label\n../imgs/x1.jpg,MEL\n../imgs/gone.jpg,NV\n{tmp_path / 'elsewhere' / 'x2.png'},NV\n")
    s = run_predictions(predictor, [lst], tmp_path / "out")
    assert sorted(r["image"] for r in rows(tmp_path / "out" / "predictions.csv")) == ["x1", "x2"]
    (rej,) = rows(tmp_path / "out" / "rejected.csv")
    assert rej["reason"] == "missing" and rej["path"] == str((tmp_path / "imgs" / "gone.jpg").resolve())
    assert "paths.csv line 3" in rej["detail"] and len(s.rejected) == 1

    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.jpg,MEL\n")
    with pytest.raises(BatchError, match=r"bad.csv must have a column named path or image_path.*\['file', 'label'\]"):
        discover_inputs([bad])
    bad.write_text("path\na.jpg\n\nb.jpg\n,\n")
    with pytest.raises(BatchError, match=r"bad.csv line 5: the 'path' cell is empty"):
        discover_inputs([bad])


def test_every_bad_file_kind_is_listed_and_the_run_goes_on(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    good = [lesion(src / "good1.jpg", 1), lesion(src / "good2.jpg", 2)]
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, size=(90, 100, 3), dtype=np.uint8))
    jpeg = _encode(noise, "JPEG")
    rgb = Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    bad = {
        "zero.jpg": (b"", "empty"),
        "text.jpg": (b"patient notes, not an image\n" * 4, "not_an_image"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "nan.tif": (_encode(Image.fromarray(np.full((40, 50), np.inf, np.float32), "F"), "TIFF"), "unsupported_mode"),
        "deep.tif": (_encode(Image.fromarray(np.full((40, 50), 70_000, dtype=np.int32)), "TIFF"), "unsupported_mode"),
        "huge.png": (_encode(Image.new("RGB", (200, 200), (120, 80, 60)), "PNG"), "too_many_pixels"),
        "heavy.png": (_encode(noise, "PNG"), "too_large"),
    }
    for name, (data, _) in bad.items():
        (src / name).write_bytes(data)
    limits = ImageLimits(max_bytes=20_000, max_pixels=10_000)
    assert all(p.stat().st_size < 20_000 for p in good) and len(bad["heavy.png"][0]) > 20_000
    s = run_predictions(predictor, [src], tmp_path / "out", limits=limits, batch_size=3)
    rej = {Path(r["path"]).name: r for r in rows(tmp_path / "out" / "rejected.csv")}
    assert {n: r["reason"] for n, r in rej.items()} == {n: reason for n, (_, reason) in bad.items()}
    assert "infinite floating-point" in rej["nan.tif"]["detail"] and "0-65535" in rej["deep.tif"]["detail"]
    assert len(rej["text.jpg"]["input_sha256"]) == 64 and rej["heavy.png"]["input_sha256"] == ""  # never read
    assert sorted(r["image"] for r in rows(tmp_path / "out" / "predictions.csv")) == ["good1", "good2"]
    assert s.done == 2 and len(s.rejected) == len(bad)


def test_rerun_recomputes_nothing(predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    for i in range(3):
        lesion(src / f"l{i}.jpg", i)
    (src / "readme.md").write_text("x")
    run_predictions(predictor, [src], tmp_path / "out", batch_size=2)
    before = (tmp_path / "out" / "predictions.csv").read_bytes()
    calls: list[int] = []
    original = predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda images: calls.append(len(images)) or original(images))
    s = run_predictions(predictor, [src], tmp_path / "out", batch_size=2)
    assert calls == [] and s.done == 0 and s.skipped == 3
    assert (tmp_path / "out" / "predictions.csv").read_bytes() == before
    assert len(rows(tmp_path / "out" / "rejected.csv")) == 1  # listed again, not duplicated
    assert json.loads((tmp_path / "out" / "run.json").read_text())["counts"]["skipped_already_done"] == 3


def test_interrupted_run_keeps_finished_batches_and_resumes(predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    for i in range(5):
        lesion(src / f"l{i}.jpg", i)
    original = predictor.predict
    calls: list[int] = []

    def failing(images: list) -> list:
        calls.append(len(images))
        if len(calls) == 3:  # one image per model call: the first of the second batch
            raise RuntimeError("power cut")
        return original(images)

    monkeypatch.setattr(predictor, "predict", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        run_predictions(predictor, [src], tmp_path / "out", batch_size=2)
    first = rows(tmp_path / "out" / "predictions.csv")
    assert [r["image"] for r in first] == ["l0", "l1"]  # the finished batch is on disk
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "interrupted"

    monkeypatch.setattr(predictor, "predict", lambda images: calls.append(len(images)) or original(images))
    calls.clear()
    s = run_predictions(predictor, [src], tmp_path / "out", batch_size=2)
    assert calls == [1, 1, 1] and s.skipped == 2 and s.done == 3
    final = rows(tmp_path / "out" / "predictions.csv")
    assert [r["image"] for r in final] == ["l0", "l1", "l2", "l3", "l4"] and final[:2] == first


def test_torn_last_line_is_dropped_and_recomputed(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(3):
        lesion(src / f"l{i}.jpg", i)
    out = tmp_path / "out"
    run_predictions(predictor, [src], out, batch_size=1)  # batch of 1: the recomputed row has the same MC masks
    complete = rows(out / "predictions.csv")
    data = (out / "predictions.csv").read_bytes()
    (out / "predictions.csv").write_bytes(data[: len(data) - 40])  # a crash in the middle of the last row
    classes = list(predictor.bundle.classes)
    assert [r["image"] for r in read_rows(out / "predictions.csv", ["image", *classes, *DETAIL_COLUMNS], repair=False)] == ["l0", "l1"]
    s = run_predictions(predictor, [src], out, batch_size=1)
    assert s.done == 1 and s.skipped == 2
    text = (out / "predictions.csv").read_text()
    assert text.endswith("\n") and text.count("\n") == 4
    assert rows(out / "predictions.csv") == complete


def test_resume_into_another_bundles_folder_is_refused(predictor: Predictor, tiny_bundle: Path, tmp_path: Path) -> None:
    lesion(tmp_path / "in" / "a.jpg", 1)
    out = tmp_path / "out"
    run_predictions(predictor, [tmp_path / "in"], out)
    other = Predictor(load_bundle(tiny_bundle), mc_samples=0)
    assert other.bundle.bundle_id != predictor.bundle.bundle_id
    before = (out / "predictions.csv").read_bytes()
    with pytest.raises(BatchError, match="new --out") as e:
        run_predictions(other, [tmp_path / "in"], out)
    assert predictor.bundle.bundle_id in str(e.value) and other.bundle.bundle_id in str(e.value)
    assert (out / "predictions.csv").read_bytes() == before
    (out / "run.json").unlink()  # the rows alone also name the bundle
    with pytest.raises(BatchError, match=predictor.bundle.bundle_id):
        run_predictions(other, [tmp_path / "in"], out)


def test_ids_stay_unique_and_duplicates_are_predicted_once(predictor: Predictor, tmp_path: Path) -> None:
    root = tmp_path / "in"
    a, b, c = lesion(root / "left" / "x.jpg", 1), lesion(root / "right" / "x.jpg", 2), lesion(root / "y.png", 3)
    s = run_predictions(predictor, [root, a, root / "right" / ".." / "right" / "x.jpg"], tmp_path / "out")
    assert s.duplicates == 2 and s.done == 3
    got = {Path(r["path"]).relative_to(root.resolve()).as_posix(): r["image"] for r in rows(tmp_path / "out" / "predictions.csv")}
    assert got == {"left/x.jpg": "left__x", "right/x.jpg": "right__x", "y.png": "y"}
    ids = image_ids([a.resolve(), b.resolve(), c.resolve(), (root / "z" / "y.jpg").resolve()], taken={"y": str(c.resolve())})
    assert ids[c.resolve()] == "y" and ids[(root / "z" / "y.jpg").resolve()] == "z__y"
    same_folder = image_ids([root / "q.jpg", root / "q.png"])
    assert len(set(same_folder.values())) == 2


def test_reports_are_written_before_their_rows_and_a_failed_one_rejects_its_image_only(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skinlesion.delivery.report as report

    src = tmp_path / "in"
    lesion(src / "<script>.png", 1)
    lesion(src / "plain.jpg", 2, "NV")
    lesion(src / "later.jpg", 3, "BCC")
    calls: list[int] = []
    original = report.render_report

    def render(*args: object, **kw: object) -> str:
        calls.append(1)
        if len(calls) == 3:  # plain.jpg (inputs are sorted: <script>, later, plain)
            raise OSError(28, "No space left on device")
        return original(*args, **kw)

    monkeypatch.setattr(report, "render_report", render)
    s = run_predictions(predictor, [src], tmp_path / "out", report=True, batch_size=1)
    assert s.status == "complete" and s.done == 2
    assert [r["image"] for r in rows(tmp_path / "out" / "predictions.csv")] == ["<script>", "later"]
    (rej,) = rows(tmp_path / "out" / "rejected.csv")
    assert Path(rej["path"]).name == "plain.jpg" and rej["reason"] == "report_failed"
    assert "reports/plain.html could not be written" in rej["detail"] and "No space left on device" in rej["detail"]
    assert not (tmp_path / "out" / "reports" / "plain.html").exists()
    monkeypatch.setattr(report, "render_report", original)
    s = run_predictions(predictor, [src], tmp_path / "out", report=True, batch_size=1, pixel_spacing_mm=0.05)
    assert s.done == 1 and s.skipped == 2  # the rejected image is tried again
    got = rows(tmp_path / "out" / "predictions.csv")
    assert len(got) == 3 and rows(tmp_path / "out" / "rejected.csv") == []
    for r in got:
        html = (tmp_path / "out" / r["report"]).read_text()
        assert NOTICE in html and f"Diagnosis: <strong>{r['diagnosis']}</strong>" in html
        assert html.count("data:image/png;base64,") >= 2 and 'id="abcde"' in html
        assert "<script" not in html
    script = next(r for r in got if r["image"] == "<script>")
    assert script["report"].startswith("reports/_script_~") and script["report"].endswith(".html")
    html = (tmp_path / "out" / script["report"]).read_text()
    assert "<title>&lt;script&gt; &ndash;" in html and "spacing unknown" in html  # first run: no spacing given
    assert " mm (pixel spacing 0.0500 mm)" in (tmp_path / "out" / "reports" / "plain.html").read_text()


def test_worker_processes_give_the_same_rows(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(3):
        lesion(src / f"l{i}.jpg", i)
    (src / "empty.png").write_bytes(b"")
    run_predictions(predictor, [src], tmp_path / "w0", workers=0, batch_size=2)
    s = run_predictions(predictor, [src], tmp_path / "w1", workers=1, batch_size=2)
    assert s.done == 3 and [r.reason for r in s.rejected] == ["empty"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "report"} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "w1" / "predictions.csv")) == strip(rows(tmp_path / "w0" / "predictions.csv"))
    assert rows(tmp_path / "w1" / "rejected.csv")[0]["reason"] == "empty"


def test_fixed_rejected_file_is_retried(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    lesion(src / "ok.jpg", 1)
    (src / "later.jpg").write_bytes(b"")
    run_predictions(predictor, [src], tmp_path / "out")
    assert [r["reason"] for r in rows(tmp_path / "out" / "rejected.csv")] == ["empty"]
    (src / "later.jpg").write_bytes(b"still not an image")
    s = run_predictions(predictor, [src], tmp_path / "out")
    assert [r.reason for r in s.rejected] == ["not_an_image"]
    assert [r["reason"] for r in rows(tmp_path / "out" / "rejected.csv")] == ["not_an_image"]  # the current reason only
    lesion(src / "later.jpg", 2)
    s = run_predictions(predictor, [src], tmp_path / "out")
    assert s.done == 1 and s.skipped == 1 and s.rejected == []
    with (tmp_path / "out" / "rejected.csv").open(newline="") as f:
        assert list(csv.reader(f)) == [list(REJECTED_COLUMNS)]
    assert sorted(r["image"] for r in rows(tmp_path / "out" / "predictions.csv")) == ["later", "ok"]


def test_parameter_checks(predictor: Predictor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'batch_size' parameter must be a positive integer. Got 0"):
        run_predictions(predictor, [], tmp_path / "o", batch_size=0)
    with pytest.raises(ValueError, match="'workers' parameter must be an integer >= 0. Got -1"):
        run_predictions(predictor, [], tmp_path / "o", workers=-1)
