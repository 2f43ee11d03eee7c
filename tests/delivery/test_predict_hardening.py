"""Batch predict under careless and hostile input: long and clashing names, formula cells, cut
multi-byte lines, converted images, and an audit log that fails or a run that dies between steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from skinlesion._csv import FORMULA_START
from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.audit import AuditError, AuditLog
from skinlesion.delivery.audit_journal import JOURNAL, AuditJournal
from skinlesion.delivery.batch import REPORT_STEM_MAX, report_name, run_predictions
from skinlesion.delivery.csv_io import OutFiles, prediction_columns, read_rows
from skinlesion.delivery.engine import Predictor
from skinlesion.ensemble.bundle import load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor(calibrated_bundle: Path) -> Predictor:
    return Predictor(load_bundle(calibrated_bundle), mc_samples=0)


def lesion(path: Path, seed: int, mode: str = "RGB") -> Path:
    image, _, _ = generate_lesion("MEL", seed, size=(48, 64), hair=False, vignette=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert(mode).save(path)
    return path


def raw_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def columns(predictor: Predictor) -> list[str]:
    return prediction_columns(list(predictor.bundle.classes))


def test_report_names_are_unique_and_bounded() -> None:
    assert report_name("ISIC_0024331") == "ISIC_0024331.html"
    names = {report_name(i) for i in ("x\\y", "x_y", "x/y", "x y", "x_y~" + "0" * 12, "a" * 250, "a" * 251)}
    assert len(names) == 7 and "x_y.html" in names
    assert all(len(n.encode()) <= REPORT_STEM_MAX + 1 + 12 + 5 and "/" not in n and "\\" not in n for n in names)


def test_a_250_character_stem_and_clashing_ids_all_get_reports(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    files = [lesion(src / ("a" * 250 + ".png"), 1), lesion(src / "x\\y.png", 2), lesion(src / "x_y.png", 3)]
    s = run_predictions(predictor, [src], tmp_path / "out", report=True, batch_size=2)
    assert s.status == "complete" and s.done == 3 and s.rejected == []
    got = read_rows(tmp_path / "out" / "predictions.csv", columns(predictor))
    assert {r["path"] for r in got} == {str(f.resolve()) for f in files}
    reports = [r["report"] for r in got]
    assert len(set(reports)) == 3 and all((tmp_path / "out" / r).is_file() for r in reports)
    for r in got:
        assert r["image"] in (tmp_path / "out" / r["report"]).read_text().replace("&#x27;", "'")


def test_formula_cells_are_escaped_and_read_back_exactly(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    names = ["=HYPERLINK(1)", "@SUM(1+1)", "+cmd", "-2+3", "\t=tab", "'=quoted"]
    for i, n in enumerate(names):
        lesion(src / f"{n}.png", i)
    (src / "=notes.png").write_text("=1+1, not an image")
    out = tmp_path / "out"
    run_predictions(predictor, [src], out)
    raw = raw_rows(out / "predictions.csv")
    assert sorted(r["image"] for r in raw) == sorted("'" + n for n in names)  # what a spreadsheet shows as text
    assert sorted(r["image"] for r in read_rows(out / "predictions.csv", columns(predictor))) == sorted(names)
    assert not [c for r in raw for c in r.values() if _formula(c)]
    s = run_predictions(predictor, [src], out)
    assert s.done == 0 and s.skipped == len(names)  # the escaped ids and paths were read back as they are
    (rej,) = raw_rows(out / "rejected.csv")
    assert rej["reason"] == "not_an_image" and rej["path"].endswith("/=notes.png")


def _formula(cell: str) -> bool:
    """Whether a spreadsheet would run ``cell`` as a formula (a plain number is fine)."""
    if cell[:1] not in FORMULA_START:
        return False
    try:
        float(cell)
        return False
    except ValueError:
        return True


def test_audit_export_escapes_formula_cells(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite")
    record = {"bundle": {"id": "b"}, "prediction": {"decision": "MEL", "probabilities": {}}, "uncertainty": None}
    log.record(source="serve", input_sha256="0" * 64, input_name='=HYPERLINK("http://x","y").png', record=record, user_id="@user")
    log.export_csv(tmp_path / "audit.csv")
    (row,) = raw_rows(tmp_path / "audit.csv")
    assert row["input_name"] == '\'=HYPERLINK("http://x","y").png' and row["user_id"] == "'@user"


def test_a_last_line_cut_inside_a_multibyte_character_is_resumed(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i, n in enumerate(["läsion_ä", "läsion_ö", "läsion_ü"]):
        lesion(src / f"{n}.png", i)
    out = tmp_path / "out"
    run_predictions(predictor, [src], out, batch_size=1)
    complete = (out / "predictions.csv").read_bytes()
    cut = complete.rindex("ü".encode()) + 1  # between the two bytes of the last ü
    (out / "predictions.csv").write_bytes(complete[:cut])
    with pytest.raises(UnicodeDecodeError):
        complete[:cut].decode("utf-8")
    s = run_predictions(predictor, [src], out, batch_size=1)
    assert s.done == 1 and s.skipped == 2
    assert (out / "predictions.csv").read_bytes() == complete  # batches of one: the same row again


def test_converted_images_say_so_in_their_row(predictor: Predictor, tmp_path: Path) -> None:
    src = tmp_path / "in"
    lesion(src / "cmyk.jpg", 1, "CMYK")
    lesion(src / "gray.png", 2, "L")
    lesion(src / "rgb.png", 3)
    run_predictions(predictor, [src], tmp_path / "out")
    got = {r["image"]: r["converted_from"] for r in read_rows(tmp_path / "out" / "predictions.csv", columns(predictor))}
    assert got["cmyk"].startswith("CMYK JPEG: CMYK to RGB") and got["gray"] == "L PNG: grayscale to RGB (R = G = B)"
    assert got["rgb"] == ""


# -- the audit log of a batch run ----------------------------------------------------------------------------
def _audited(audit: AuditLog) -> list[str]:
    return sorted(r["input_name"] for r in audit.rows())


def test_record_once_skips_request_ids_the_log_holds(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.sqlite")
    record = {"bundle": {"id": "b"}, "prediction": {"decision": "MEL"}}
    entries = [{"source": "predict", "input_sha256": "0" * 64, "input_name": f"f{i}", "record": record, "request_id": f"r{i}"} for i in range(3)]
    assert log.record_once(entries[:2]) == 2 and log.record_once(entries) == 1 and log.record_once(entries + entries) == 0
    assert log.count() == 3
    with pytest.raises(ValueError, match="non-empty 'request_id'"):
        log.record_once([{**entries[0], "request_id": None}])


def test_an_audit_failure_never_stops_the_run_and_its_rows_come_later(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in"
    files = [lesion(src / f"l{i}.png", i) for i in range(3)]
    audit, out = AuditLog(tmp_path / "audit.sqlite"), tmp_path / "out"

    def locked(entries: object) -> int:
        raise AuditError("Cannot write to the audit database: database is locked")

    with monkeypatch.context() as m:
        m.setattr(audit, "record_once", locked)
        s = run_predictions(predictor, [src], out, batch_size=2, audit=audit)
    assert s.status == "complete" and s.done == 3 and audit.count() == 0
    assert s.audit_rows == 0 and s.audit_pending == 3 and json.loads((out / "run.json").read_text())["audit_pending"] == 3
    assert (out / JOURNAL).is_file()
    s = run_predictions(predictor, [src], out, batch_size=2, audit=audit)  # the next run writes them
    assert s.done == 0 and s.audit_rows == 3 and s.audit_pending == 0 and not (out / JOURNAL).exists()
    assert _audited(audit) == sorted(str(f.resolve()) for f in files)


@pytest.mark.parametrize("dies", ["after staging, before the rows", "after the rows, before the audit write"])
def test_a_run_that_dies_between_its_steps_gets_each_audit_row_once(
    predictor: Predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    src = tmp_path / "in"
    files = [lesion(src / f"l{i}.png", i) for i in range(5)]
    audit, out = AuditLog(tmp_path / "audit.sqlite"), tmp_path / "out"
    target, name = (OutFiles, "append") if dies.startswith("after staging") else (AuditJournal, "flush")
    real, calls = getattr(target, name), [0]

    def dies_from_the_second_call(self: object, *args: object) -> object:
        calls[0] += 1
        if calls[0] >= 2:
            raise KeyboardInterrupt  # stands for kill -9: nothing after this point runs
        return real(self, *args)

    with monkeypatch.context() as m:
        m.setattr(target, name, dies_from_the_second_call)
        with pytest.raises(KeyboardInterrupt):
            run_predictions(predictor, [src], out, batch_size=2, audit=audit)
    assert len(read_rows(out / "predictions.csv", columns(predictor))) == (2 if dies.startswith("after staging") else 4)
    s = run_predictions(predictor, [src], out, batch_size=2, audit=audit)
    assert s.status == "complete"
    final = read_rows(out / "predictions.csv", columns(predictor))
    assert sorted(r["path"] for r in final) == sorted(str(f.resolve()) for f in files)
    assert _audited(audit) == sorted(r["path"] for r in final)  # one audit row per CSV row, none twice
    assert len({r["request_id"] for r in audit.rows()}) == 5 and not (out / JOURNAL).exists()


def test_a_journal_line_torn_by_a_kill_is_ignored(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.sqlite")
    record = {"bundle": {"id": "b"}, "prediction": {"decision": "MEL"}}
    entry = {"source": "predict", "input_sha256": "0" * 64, "input_name": "/done.png", "record": record, "request_id": "r1"}
    line = json.dumps(entry).encode()
    (tmp_path / JOURNAL).write_bytes(line + b"\n" + line.replace(b"done", b"todo")[:30])
    journal = AuditJournal(audit, tmp_path)
    journal.recover({"/done.png"})
    assert [r["input_name"] for r in audit.rows()] == ["/done.png"] and not (tmp_path / JOURNAL).exists()
