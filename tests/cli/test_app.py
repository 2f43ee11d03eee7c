"""The composed ``skinlesion`` app: every command group is reachable and wired to the library."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from skinlesion import __version__
from skinlesion.cli.main import app
from skinlesion.data.synthetic import write_synthetic_dataset

runner = CliRunner()


def test_version_and_help() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    r = runner.invoke(app, ["--help"])
    for cmd in ("data", "models", "train", "evaluate", "demo"):
        assert cmd in r.output


def test_models_list_shows_registry_with_offline_sources() -> None:
    r = runner.invoke(app, ["models", "list", "tf_efficientnet_lite*"])
    assert r.exit_code == 0, r.output
    assert "tf_efficientnet_lite0" in r.output and "lite-pip" in r.output
    assert "resnet50" not in r.output


def test_data_split_through_the_app(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "syn", n_lesions_per_class=6, size=(32, 40), seed=2)
    out = tmp_path / "m.csv"
    r = runner.invoke(app, ["data", "split", "--format", "ham10000", "--root", str(root), "--out", str(out), "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and (tmp_path / "m.json").is_file()


def test_data_download_unknown_dataset_is_one_line_error(tmp_path: Path) -> None:
    r = runner.invoke(app, ["data", "download", "imagenet", "--dest", str(tmp_path / "d")])
    assert r.exit_code != 0
    assert "imagenet" in r.output and "Traceback" not in r.output


def test_data_synthetic_writes_reproducible_samples(tmp_path: Path) -> None:
    a = runner.invoke(app, ["data", "synthetic", "--out", str(tmp_path / "a"), "--lesions-per-class", "1", "--seed", "5"])
    b = runner.invoke(app, ["data", "synthetic", "--out", str(tmp_path / "b"), "--lesions-per-class", "1", "--seed", "5"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    files = sorted((tmp_path / "a" / "images").glob("*.jpg"))
    assert len(files) >= 7  # one lesion of each class, 1-3 images each
    assert [f.read_bytes() for f in files] == [(tmp_path / "b" / "images" / f.name).read_bytes() for f in files]
