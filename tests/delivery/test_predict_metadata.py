"""Patient metadata in ``skinlesion predict``: CSV-list columns, ``--metadata`` tables, the
age/sex/site columns of predictions.csv, rejected invalid values and unmatched rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.batch import run_predictions
from skinlesion.delivery.csv_io import DETAIL_COLUMNS
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.images import read_image
from skinlesion.delivery.inputs import BatchError
from skinlesion.delivery.metadata import MetadataFileError
from skinlesion.ensemble.bundle import load_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def predictor(fusion_bundle: Path) -> Predictor:
    return Predictor(load_bundle(fusion_bundle), mc_samples=0)


def _lesions(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"l{i}.png"
        Image.fromarray(generate_lesion("MEL", i, size=(48, 64), hair=False, vignette=False)[0]).save(p)
        out.append(p)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def test_list_columns_and_metadata_table_round_trip(predictor: Predictor, tmp_path: Path) -> None:
    files = _lesions(tmp_path / "in", 4)
    listing = _write_csv(tmp_path / "list.csv", ["path", "age", "sex", "site"], [
        ["in/l0.png", "80", "male", "back"],
        ["in/l1.png", "", "unknown", ""],  # all missing
        ["in/l2.png", "45", "FEMALE", "elbow"],  # a site the model never saw: used as unknown
        ["in/l3.png", "30", "male", "face"],
    ])
    table = _write_csv(tmp_path / "meta.csv", ["image", "age"], [["l3", "70"], ["ghost", "50"]])  # replaces l3's age
    s = run_predictions(predictor, [listing], tmp_path / "out", batch_size=3, metadata=table)
    assert s.done == 4 and not s.rejected
    assert s.metadata_unmatched == ["meta.csv line 3: image 'ghost'"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["metadata_unmatched"] == s.metadata_unmatched
    with (tmp_path / "out" / "predictions.csv").open(newline="") as f:
        header = next(csv.reader(f))
    classes = list(predictor.bundle.classes)
    assert header[: 1 + len(classes)] == ["image", *classes] and header[1 + len(classes) :] == list(DETAIL_COLUMNS)
    got = _rows(tmp_path / "out" / "predictions.csv")
    assert [got[k][c] for k in ("l0", "l1", "l2", "l3") for c in ("age", "sex", "site")] == [
        "80", "male", "back", "", "", "", "45", "female", "", "70", "male", "face",
    ]
    used = {"l0": {"age": 80, "sex": "male", "site": "back"}, "l1": None, "l2": {"age": 45, "sex": "female", "site": "elbow"},
            "l3": {"age": 70, "sex": "male", "site": "face"}}
    for i, path in enumerate(files):
        md = used[f"l{i}"]
        (rec,) = predictor.predict([read_image(path)], metadata=[md] if md else None)
        probs = [float(got[f"l{i}"][c]) for c in classes]
        np.testing.assert_allclose(probs, list(rec["prediction"]["probabilities"].values()), atol=1e-7)


def test_invalid_metadata_rejects_the_image_only(predictor: Predictor, tmp_path: Path) -> None:
    _lesions(tmp_path / "in", 3)
    table = _write_csv(tmp_path / "meta.csv", ["path", "sex", "age"], [["in/l0.png", "x", "50"], ["in/l1.png", "male", "abc"]])
    s = run_predictions(predictor, [tmp_path / "in"], tmp_path / "out", metadata=table)
    assert s.done == 1 and sorted(r.reason for r in s.rejected) == ["invalid_metadata"] * 2
    with (tmp_path / "out" / "rejected.csv").open(newline="") as f:
        rejected = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert "The 'sex' value of meta.csv line 2" in rejected["l0.png"]["detail"] and "Got 'x'" in rejected["l0.png"]["detail"]
    assert "The 'age' value of meta.csv line 3" in rejected["l1.png"]["detail"]
    assert list(_rows(tmp_path / "out" / "predictions.csv")) == ["l2"]


def test_bad_tables_and_engines_stop_before_starting(predictor: Predictor, tmp_path: Path) -> None:
    _lesions(tmp_path / "in", 1)
    _lesions(tmp_path / "in" / "sub", 1)  # a second l0.png: the stem names two inputs
    cases = [
        (_write_csv(tmp_path / "a.csv", ["file", "age"], [["l0", "5"]]), r"must have a column path or image and at least one of"),
        (_write_csv(tmp_path / "b.csv", ["image", "weight"], [["l0", "5"]]), r"at least one of \['age', 'sex', 'site'\]"),
        (_write_csv(tmp_path / "c.csv", ["image", "age"], [["x", "5"], ["x", "6"]]), r"c.csv line 3: image 'x' is already given on c.csv line 2"),
        (_write_csv(tmp_path / "d.csv", ["image", "age"], [["l0", "5"]]), r"image 'l0' matches 2 inputs"),
    ]
    for table, match in cases:
        with pytest.raises(MetadataFileError, match=match):
            run_predictions(predictor, [tmp_path / "in"], tmp_path / "out", metadata=table)
    ok = _write_csv(tmp_path / "e.csv", ["image", "age"], [["sub__l0", "5"]])  # the predictions.csv id works

    class _ImageOnly:
        name, accepts_metadata = "onnx", False

    p = Predictor(predictor.bundle, mc_samples=0)
    p.engine = _ImageOnly()  # type: ignore[assignment]
    with pytest.raises(BatchError, match=r"onnx engine runs image-only graphs.*--engine torch"):
        run_predictions(p, [tmp_path / "in"], tmp_path / "out", metadata=ok)
    assert not (tmp_path / "out" / "predictions.csv").exists()
    s = run_predictions(predictor, [tmp_path / "in"], tmp_path / "out", metadata=ok, batch_size=2)
    assert s.done == 2 and _rows(tmp_path / "out" / "predictions.csv")["sub__l0"]["age"] == "5"


def test_cli_metadata_option(fusion_bundle: Path, tmp_path: Path) -> None:
    _lesions(tmp_path / "in", 2)
    table = _write_csv(tmp_path / "meta.csv", ["image", "age", "sex", "site"], [["l0", "80", "male", "back"], ["nobody", "1", "", ""]])
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(tmp_path / "in"), "-b", str(fusion_bundle), "-o", str(out), "--metadata", str(table),
                            "--mc-samples", "0", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "metadata row matches no input meta.csv line 3: image 'nobody'" in " ".join(r.output.split())
    rows = _rows(out / "predictions.csv")
    assert (rows["l0"]["age"], rows["l0"]["sex"], rows["l0"]["site"]) == ("80", "male", "back") and rows["l1"]["age"] == ""
    assert json.loads((out / "run.json").read_text())["options"]["metadata"] == str(table)
    bad = _write_csv(tmp_path / "bad.csv", ["name", "age"], [["l0", "1"]])
    r = runner.invoke(app, ["predict", str(tmp_path / "in"), "-b", str(fusion_bundle), "-o", str(tmp_path / "o2"), "--metadata", str(bad)])
    assert r.exit_code == 1 and "must have a column path or image" in r.output and "Traceback" not in r.output


def test_reports_show_the_metadata_used(predictor: Predictor, tmp_path: Path) -> None:
    _lesions(tmp_path / "in", 2)
    table = _write_csv(tmp_path / "meta.csv", ["image", "age", "sex", "site"], [["l0", "80", "male", "back"]])
    s = run_predictions(predictor, [tmp_path / "in"], tmp_path / "out", report=True, metadata=table)
    assert s.done == 2
    html = (tmp_path / "out" / "reports" / "l0.html").read_text()
    assert "Patient metadata used</td><td>age 80, sex male, site back" in html.replace("\n", "")
    assert "none given: predicted as if age, sex and site were unknown" in (tmp_path / "out" / "reports" / "l1.html").read_text()
