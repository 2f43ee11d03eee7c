"""``skinlesion predict`` through the composed app: outputs, summary, --strict, resume errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.main import app
from skinlesion.data.synthetic import generate_lesion

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


def _folder(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(generate_lesion("MEL", i, size=(48, 64), hair=False, vignette=False)[0]).save(root / f"l{i}.jpg")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_outputs_and_strict_fails_on_rejects(calibrated_bundle: Path, tmp_path: Path) -> None:
    src = _folder(tmp_path / "in")
    out = tmp_path / "out"
    audit = tmp_path / "audit.sqlite"
    args = ["predict", str(src), "-b", str(calibrated_bundle), "-o", str(out), "--mc-samples", "2", "--batch-size", "2",
            "--workers", "1", "--audit-db", str(audit)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "3 done, 0 skipped (already done), 1 rejected" in r.output
    assert "broken.jpg: not_an_image" in r.output and "img/s" in r.output
    assert len(_rows(out / "predictions.csv")) == 3 and _rows(out / "rejected.csv")[0]["reason"] == "not_an_image"
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["workers"] == 1 and run["options"]["mc_samples"] == 2 and run["status"] == "complete"

    from skinlesion.delivery.audit import AuditLog

    logged = AuditLog(audit).rows()
    assert len(logged) == 3 and {x["source"] for x in logged} == {"predict"}
    assert {x["input_sha256"] for x in logged} == {row["input_sha256"] for row in _rows(out / "predictions.csv")}

    r = runner.invoke(app, [*args[:-2], "--strict"])  # resume: nothing to predict, the broken file again
    assert r.exit_code == 1, r.output
    assert "0 done, 3 skipped (already done), 1 rejected" in r.output and "1 input(s) rejected (--strict)" in r.output
    assert len(_rows(out / "predictions.csv")) == 3


def test_report_option_and_checkpoint_source(tiny_members: list[Path], tmp_path: Path) -> None:
    src = _folder(tmp_path / "in", n=1)
    (src / "broken.jpg").unlink()
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(src), "-c", str(tiny_members[0]), "-o", str(out), "--report", "--mc-samples", "0",
                            "--workers", "0", "--strict"])
    assert r.exit_code == 0, r.output
    (row,) = _rows(out / "predictions.csv")
    assert row["report"] == "reports/l0.html" and (out / "reports" / "l0.html").is_file()
    assert row["review_flag"] == "" and row["epistemic_mutual_information"] == ""  # --mc-samples 0: no uncertainty


def test_user_errors_are_one_line(
    calibrated_bundle: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skinlesion.ensemble.bundle as bundle_module

    src = _folder(tmp_path / "in", n=1)
    monkeypatch.setattr(bundle_module, "default_bundle_dir", lambda: tmp_path / "no-default")  # neither given: the default
    r = runner.invoke(app, ["predict", str(src), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "this installation has no default bundle" in r.output
    r = runner.invoke(app, ["predict", str(src), "-b", str(calibrated_bundle), "-c", str(calibrated_bundle), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "exactly one of --bundle or --checkpoint" in r.output
    r = runner.invoke(app, ["predict", str(src), "-b", str(calibrated_bundle), "--engine", "tensorrt"])
    assert r.exit_code == 1 and "'--engine' option must be one of ('auto', 'torch', 'onnx'). Got 'tensorrt'" in r.output
    r = runner.invoke(app, ["serve", "-b", str(calibrated_bundle), "--engine", "tensorrt"])
    assert r.exit_code == 1 and "'--engine' option must be one of ('auto', 'torch', 'onnx'). Got 'tensorrt'" in r.output
    common = [str(src), "-o", str(tmp_path / "o"), "--mc-samples", "0", "--workers", "0"]
    assert runner.invoke(app, ["predict", *common, "-b", str(calibrated_bundle)]).exit_code == 0
    r = runner.invoke(app, ["predict", *common, "-b", str(tiny_bundle)])
    assert r.exit_code == 1 and "new --out" in r.output and "Traceback" not in r.output
    assert "predict" in runner.invoke(app, ["--help"]).output
