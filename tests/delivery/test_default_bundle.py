"""``--bundle default`` and no --bundle/--checkpoint: predict, serve and ``explain IMAGE`` load the
bundle packaged in ``skinlesion/default_bundle``, or say plainly that this installation has none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import skinlesion.ensemble.bundle as bundle_module
from skinlesion.cli.main import app
from skinlesion.data.synthetic import generate_lesion
from skinlesion.ensemble.bundle import BundleError, default_bundle_dir, load_bundle, load_model_source, resolve_bundle_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
NO_DEFAULT = "this installation has no default bundle"


@pytest.fixture(scope="module")
def packaged(calibrated_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the calibrated bundle standing in for ``skinlesion/default_bundle``."""
    out = tmp_path_factory.mktemp("package") / "default_bundle"
    shutil.copytree(calibrated_bundle, out)
    return out


@pytest.fixture()
def installed(packaged: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(bundle_module, "default_bundle_dir", lambda: packaged)
    return packaged


@pytest.fixture()
def not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    missing = tmp_path / "default_bundle"
    monkeypatch.setattr(bundle_module, "default_bundle_dir", lambda: missing)
    return missing


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    p = tmp_path / "lesion.png"
    Image.fromarray(generate_lesion("MEL", 0, size=(48, 64), hair=False, vignette=False)[0]).save(p)
    return p


def test_the_packaged_location() -> None:
    import skinlesion

    assert default_bundle_dir() == Path(skinlesion.__file__).resolve().parent / "default_bundle"


def test_resolve_and_load(installed: Path, tmp_path: Path) -> None:
    assert resolve_bundle_path("default") == installed == resolve_bundle_path(Path("default"))
    assert resolve_bundle_path("./default") == Path("./default")  # a local folder called default
    assert resolve_bundle_path(tmp_path) == tmp_path
    want = load_bundle(installed).bundle_id
    assert load_model_source(bundle="default").bundle_id == want
    assert load_model_source(use_default=True).bundle_id == want
    with pytest.raises(ValueError, match="Give exactly one of --bundle or --checkpoint"):
        load_model_source()  # library callers must ask for the default
    with pytest.raises(ValueError, match="Give exactly one of --bundle or --checkpoint"):
        load_model_source(bundle="default", checkpoint=tmp_path, use_default=True)


def test_a_missing_default_is_named_plainly(not_installed: Path) -> None:
    for call in (lambda: resolve_bundle_path("default"), lambda: load_model_source(use_default=True)):
        with pytest.raises(BundleError, match=f"{NO_DEFAULT} .*`skinlesion recipe run`.*or pass --bundle"):
            call()
    not_installed.mkdir()  # a folder without bundle.json is no bundle either
    with pytest.raises(BundleError, match=NO_DEFAULT):
        resolve_bundle_path("default")


def test_predict_explain_and_serve_use_the_default(installed: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    want = load_bundle(installed).bundle_id
    r = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "p"), "--mc-samples", "0", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p" / "run.json").read_text())["bundle_id"] == want
    r = runner.invoke(app, ["predict", str(image), "-b", "default", "-o", str(tmp_path / "p2"), "--mc-samples", "0", "--workers", "0"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["explain", str(image), "-o", str(tmp_path / "e"), "--mc-samples", "0"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e" / "lesion.json").read_text())["bundle"]["id"] == want
    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app))
    r = runner.invoke(app, ["serve", "--audit-db", str(tmp_path / "a.sqlite"), "--mc-samples", "0"])
    assert r.exit_code == 0, r.output
    with TestClient(started["app"]) as c:
        assert c.get("/health").json()["bundle_id"] == want


def test_commands_say_when_there_is_no_default(not_installed: Path, image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("must not start"))
    for args in (
        ["predict", str(image), "-o", str(tmp_path / "p")],
        ["predict", str(image), "--bundle", "default", "-o", str(tmp_path / "p")],
        ["explain", str(image), "-o", str(tmp_path / "e")],
        ["serve", "--audit-db", str(tmp_path / "a.sqlite")],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and NO_DEFAULT in " ".join(r.output.split()) and "Traceback" not in r.output, (args, r.output)
