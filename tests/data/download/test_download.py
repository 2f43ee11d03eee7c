"""Tests of ``skinlesion.data.download`` against a local HTTP server. Only 127.0.0.1 is contacted."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.data_download import download_command
from skinlesion.data import download as dl
from skinlesion.data.download import (
    CHECKSUMS_NAME,
    DATASETS,
    RECORD_NAME,
    download_dataset,
    list_sources,
    read_record,
    source_sets,
)
from skinlesion.errors import DownloadError

IDS = ("ISIC_0024306", "ISIC_0024307", "ISIC_0024308")
DX = ("nv", "mel", "bkl")
ISIC2018 = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]

# --------------------------------------------------------------------------- fixtures and builders

_real_create_connection = socket.create_connection


def _loopback_only(address, *args, **kwargs):  # type: ignore[no-untyped-def]
    if address[0] not in ("127.0.0.1", "localhost"):
        raise AssertionError(f"test tried to contact {address}")
    return _real_create_connection(address, *args, **kwargs)


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach beyond the loopback interface, nor pick up a user's mirror or proxy."""
    monkeypatch.setattr(socket, "create_connection", _loopback_only)
    for var in (dl.ENV_BASE_URL, "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def _jpeg(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (40 * k, 90, 150)).save(buf, "JPEG")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _csv(rows: list[list[str]], delimiter: str = ",") -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def isic2018_training_files(ids: tuple[str, ...] = IDS, dx: tuple[str, ...] = DX) -> dict[str, bytes]:
    """Tiny stand-ins for the ISIC 2018 Task 3 training archives (folder inside the zip, license text)."""
    images = {f"ISIC2018_Task3_Training_Input/{i}.jpg": _jpeg(k) for k, i in enumerate(ids)}
    images["ISIC2018_Task3_Training_Input/LICENSE.txt"] = b"CC-BY-NC"
    truth = [["image", *ISIC2018]] + [
        [i, *("1.0" if c.lower() == d else "0.0" for c in ISIC2018)] for i, d in zip(ids, dx, strict=True)
    ]
    groups = [["image", "lesion_id", "diagnosis_confirm_type"]] + [
        [i, f"HAM_{k:07d}", t]
        for k, (i, t) in enumerate(
            zip(
                ids,
                ("histopathology", "serial imaging showing no change", "single image expert consensus"),
                strict=True,
            )
        )
    ]
    return {
        "ISIC2018_Task3_Training_Input.zip": _zip(images),
        "ISIC2018_Task3_Training_GroundTruth.zip": _zip(
            {"ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv": _csv(truth)}
        ),
        "ISIC2018_Task3_Training_LesionGroupings.csv": _csv(groups),
    }


def dataverse_files(delimiter: str = ",") -> dict[str, bytes]:
    """Tiny stand-ins for the HAM10000 Dataverse archives (flat zips) and metadata."""
    meta = [HAM_COLUMNS] + [
        [f"HAM_{k:07d}", i, d, "histo", "45.0", "male", "back"] for k, (i, d) in enumerate(zip(IDS, DX, strict=True))
    ]
    return {
        "HAM10000_images_part_1.zip": _zip({f"{i}.jpg": _jpeg(k) for k, i in enumerate(IDS[:2])}),
        "HAM10000_images_part_2.zip": _zip({f"{IDS[2]}.jpg": _jpeg(2)}),
        "HAM10000_metadata.csv" if delimiter == "," else "HAM10000_metadata.tab": _csv(meta, delimiter),
    }


@dataclass
class Server:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    honour_range: bool = True
    truncate: dict[str, int] = field(default_factory=dict)

    def serve(self, prefix: str, files: dict[str, bytes]) -> None:
        self.files.update({f"{prefix}/{name}": data for name, data in files.items()})

    def gets(self, name: str) -> list[str | None]:
        """Range headers of the requests for files named ``name``."""
        return [rng for path, rng in self.requests if path.endswith("/" + name)]


@pytest.fixture
def server() -> Iterator[Server]:
    """ThreadingHTTPServer on 127.0.0.1 with a handler that supports (or ignores) Range requests."""
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            status, body, start = 200, data, 0
            if rng and state.honour_range:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))  # type: ignore[union-attr]
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body = 206, data[start:]
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            body = body[: state.truncate.get(self.path, len(body))]
            self.wfile.write(body)
            state.sent.append(len(body))

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    lines = (root / CHECKSUMS_NAME).read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ") for line in lines)}


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_ham_layout(root: Path) -> list[dict[str, str]]:
    rows = _read_rows(root / "HAM10000_metadata.csv")
    assert list(rows[0]) == HAM_COLUMNS
    assert [(r["image_id"], r["dx"]) for r in rows] == list(zip(IDS, DX, strict=True))
    for image_id in IDS:
        with Image.open(root / "images" / f"{image_id}.jpg") as im:
            assert im.size == (8, 6)
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"{i}.jpg" for i in IDS]
    return rows


# --------------------------------------------------------------------------- registry and arguments


def test_registry_names_and_isic_urls() -> None:
    assert DATASETS == ("ham10000", "isic2018", "isic2019")
    urls = [f.url for f in list_sources("isic2018", "test")]
    assert urls == [
        "https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task3_Test_Input.zip",
        "https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task3_Test_GroundTruth.zip",
    ]
    assert {f.filename for f in list_sources("isic2019")} == {
        "ISIC_2019_Training_Input.zip",
        "ISIC_2019_Training_GroundTruth.csv",
        "ISIC_2019_Training_Metadata.csv",
    }
    # the Dataverse set has no direct URL; the ISIC bucket is what gets downloaded for HAM10000
    assert [s.name for s in source_sets("ham10000")] == ["dataverse", "isic-challenge"]
    assert list_sources("ham10000")[0].filename == "ISIC2018_Task3_Training_Input.zip"


def test_unknown_dataset_lists_names(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"Unknown dataset 'ham1000'.*\['ham10000', 'isic2018', 'isic2019'\]"):
        download_dataset("ham1000", tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "val"}, r"'split' parameter must be one of \['train', 'test', 'all'\] for isic2019\. Got 'val'"),
        ({"base_url": "ftp://mirror"}, r"'base_url' parameter must be an http\(s\) URL.*Got 'ftp://mirror'"),
        ({"timeout": 0}, r"'timeout' parameter must be a positive number.*Got 0"),
        ({"from_dir": "/nonexistent/skinlesion"}, r"'from_dir' folder /nonexistent/skinlesion does not exist"),
        ({"sources": list_sources("isic2018")}, r"'sources' parameter must list the files of one source set"),
        ({"split": "all", "sources": list_sources("isic2019")}, r"'sources' parameter applies to one split"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(DownloadError, match=message):
        download_dataset("isic2019", tmp_path, **kwargs)


# --------------------------------------------------------------------------- full downloads


def test_download_ham10000_from_isic_bucket(server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    calls: list[tuple[str, int, int | None]] = []
    root = tmp_path / "ham"
    with caplog.at_level(logging.WARNING, logger="skinlesion"):
        out = download_dataset("ham10000", root, base_url=server.url, progress=lambda *a: calls.append(a))
    assert out == root
    rows = _assert_ham_layout(root)
    assert [(r["lesion_id"], r["dx_type"], r["age"], r["sex"]) for r in rows] == [
        ("HAM_0000000", "histo", "", "unknown"),
        ("HAM_0000001", "follow_up", "", "unknown"),
        ("HAM_0000002", "consensus", "", "unknown"),
    ]
    assert (root / "licenses" / "ISIC2018_Task3_Training_Input" / "LICENSE.txt").read_bytes() == b"CC-BY-NC"
    assert _checksums(root) == {name: _sha(data) for name, data in files.items()}
    record = read_record(root)["datasets"]["ham10000"]["train"]
    assert record["source"] == "isic-challenge" and record["images"] == 3
    assert [f["url"] for f in record["files"]] == [f"{server.url}/2018/{name}" for name in files]
    assert {f["filename"]: (f["size"], f["pinned"]) for f in record["files"]} == {
        n: (len(d), False) for n, d in files.items()
    }
    assert not (root / "downloads").exists()  # archives removed once unpacked
    # progress reached the full size of every file; unpinned files were reported
    final = {name: (done, total) for name, done, total in calls}
    assert final == {name: (len(d), len(d)) for name, d in files.items()}
    assert "not verified against a pinned sha256" in caplog.text
    assert "age, sex and localization are not part of those files" in caplog.text


@pytest.mark.parametrize(("dataset", "split", "prefix"), [("isic2018", "val", "2018"), ("isic2019", "train", "2019")])
def test_download_isic_layouts(server: Server, tmp_path: Path, dataset: str, split: str, prefix: str) -> None:
    if dataset == "isic2018":
        stem, image_dir = "ISIC2018_Task3_Validation", "ISIC2018_Task3_Validation_Input"
        truth = [["image", *ISIC2018], [IDS[0], "0.0", "1.0", *["0.0"] * 5]]
        files = {
            f"{stem}_Input.zip": _zip({f"{image_dir}/{IDS[0]}.jpg": _jpeg(0), f"{image_dir}/ATTRIBUTION.txt": b"x"}),
            f"{stem}_GroundTruth.zip": _zip({f"{stem}_GroundTruth/{stem}_GroundTruth.csv": _csv(truth)}),
        }
        expected = [f"{stem}_GroundTruth.csv", f"{image_dir}/{IDS[0]}.jpg"]
    else:
        image_dir = "ISIC_2019_Training_Input"
        truth = [["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"], [IDS[0], "1.0", *["0.0"] * 8]]
        files = {
            "ISIC_2019_Training_Input.zip": _zip({f"{image_dir}/{IDS[0]}.jpg": _jpeg(0)}),
            "ISIC_2019_Training_GroundTruth.csv": _csv(truth),
            "ISIC_2019_Training_Metadata.csv": _csv(
                [
                    ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"],
                    [IDS[0], "55.0", "anterior torso", "BCN_0000001", "male"],
                ]
            ),
        }
        expected = [*list(files)[1:], f"{image_dir}/{IDS[0]}.jpg"]
    server.serve(f"/{prefix}", files)
    download_dataset(dataset, tmp_path, split=split, base_url=server.url)
    for rel in expected:
        assert (tmp_path / rel).is_file(), rel
    assert sorted(p.name for p in (tmp_path / image_dir).iterdir()) == [f"{IDS[0]}.jpg"]


def test_download_isic2018_train_has_lesion_ids(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    download_dataset("isic2018", tmp_path, split="training", base_url=server.url)
    assert (tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv").read_bytes() == files[
        "ISIC2018_Task3_Training_LesionGroupings.csv"
    ]
    truth = _read_rows(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv")
    assert [r["image"] for r in truth] == list(IDS)
    meta = _read_rows(tmp_path / "HAM10000_metadata.csv")
    assert [(r["image_id"], r["lesion_id"], r["dx"]) for r in meta] == [
        (i, f"HAM_{k:07d}", d) for k, (i, d) in enumerate(zip(IDS, DX, strict=True))
    ]
    assert sorted(p.name for p in (tmp_path / "ISIC2018_Task3_Training_Input").iterdir()) == [f"{i}.jpg" for i in IDS]


def test_pinned_sources_verify_and_env_base_url(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    files = dataverse_files()
    server.serve("/dv", files)
    pinned = [
        replace(
            f,
            url=f"https://dataverse.example.org/dv/{f.filename}",
            size=len(files[f.filename]),
            sha256=_sha(files[f.filename]),
        )
        for f in source_sets("ham10000")[0].files
    ]
    monkeypatch.setenv(dl.ENV_BASE_URL, server.url)
    with caplog.at_level(logging.WARNING, logger="skinlesion"):
        download_dataset("ham10000", tmp_path, sources=pinned)
    rows = _assert_ham_layout(tmp_path)
    assert rows[0]["sex"] == "male" and rows[0]["localization"] == "back"
    assert "not verified" not in caplog.text
    assert all(f["pinned"] for f in read_record(tmp_path)["datasets"]["ham10000"]["train"]["files"])
    assert len(server.requests) == 3


# --------------------------------------------------------------------------- resume and Range handling


def test_resume_sends_range_and_completes(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    name = "ISIC2018_Task3_Training_Input.zip"
    half = len(files[name]) // 2
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / f"{name}.part").write_bytes(files[name][:half])
    download_dataset("ham10000", tmp_path, base_url=server.url)
    assert server.gets(name) == [f"bytes={half}-"]
    assert len(files[name]) - half in server.sent
    assert _checksums(tmp_path)[name] == _sha(files[name])
    _assert_ham_layout(tmp_path)


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    server.honour_range = False
    name = "ISIC2018_Task3_Training_Input.zip"
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / f"{name}.part").write_bytes(b"GARBAGE-PREFIX")
    download_dataset("ham10000", tmp_path, base_url=server.url)
    assert server.gets(name) == ["bytes=14-"]  # asked to resume; got a 200 and the whole file
    assert _checksums(tmp_path)[name] == _sha(files[name])
    _assert_ham_layout(tmp_path)


@pytest.mark.parametrize("case", ["complete", "too_long"])
def test_http_416(server: Server, tmp_path: Path, case: str) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    name = "ISIC2018_Task3_Training_LesionGroupings.csv"
    part = files[name] if case == "complete" else files[name] + b"extra bytes that do not belong"
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / f"{name}.part").write_bytes(part)
    download_dataset("ham10000", tmp_path, base_url=server.url)
    # complete: the 416 says the .part holds the whole file; too long: the .part is dropped and fetched anew
    assert server.gets(name) == ([f"bytes={len(part)}-"] if case == "complete" else [f"bytes={len(part)}-", None])
    assert _checksums(tmp_path)[name] == _sha(files[name])


def test_interrupted_transfer_keeps_part_for_resume(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    name = "ISIC2018_Task3_Training_Input.zip"
    server.truncate[f"/2018/{name}"] = 100
    with pytest.raises(DownloadError, match=rf"{name}.*(interrupted|closed) after \d+ .*run again to resume"):
        download_dataset("ham10000", tmp_path, base_url=server.url)
    part = tmp_path / "downloads" / f"{name}.part"
    assert part.read_bytes() == files[name][:100]
    server.truncate.clear()
    download_dataset("ham10000", tmp_path, base_url=server.url)
    assert server.gets(name)[-1] == "bytes=100-"
    _assert_ham_layout(tmp_path)


# --------------------------------------------------------------------------- verification errors


def test_checksum_mismatch_deletes_part(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    name = "ISIC2018_Task3_Training_LesionGroupings.csv"
    sources = [replace(f, sha256="0" * 64) if f.filename == name else f for f in list_sources("ham10000")]
    with pytest.raises(
        DownloadError, match=rf"sha256 mismatch for {name}: expected 0{{64}} \(pinned\), got {_sha(files[name])}"
    ):
        download_dataset("ham10000", tmp_path, base_url=server.url, sources=sources)
    assert not list((tmp_path / "downloads").glob(f"{name}*"))
    assert not (tmp_path / RECORD_NAME).exists()


def test_size_mismatch_from_content_length(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    name = "ISIC2018_Task3_Training_GroundTruth.zip"
    sources = [replace(f, size=5) if f.filename == name else f for f in list_sources("ham10000")]
    with pytest.raises(
        DownloadError, match=rf"Size mismatch for {name}: expected 5 bytes, got {len(files[name])} bytes"
    ):
        download_dataset("ham10000", tmp_path, base_url=server.url, sources=sources)
    assert not list((tmp_path / "downloads").glob(f"{name}*"))


def test_size_mismatch_of_local_file_keeps_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = isic2018_training_files()
    for name, data in files.items():
        (src / name).write_bytes(data)
    name = "ISIC2018_Task3_Training_Input.zip"
    sources = [replace(f, size=7) if f.filename == name else f for f in list_sources("ham10000")]
    with pytest.raises(
        DownloadError, match=rf"Size mismatch for {name}: expected 7 bytes, got {len(files[name])} bytes"
    ):
        download_dataset("ham10000", tmp_path / "out", from_dir=src, sources=sources)
    assert (src / name).read_bytes() == files[name]  # never delete the user's own files


def test_http_error_names_file_and_status(server: Server, tmp_path: Path) -> None:
    with pytest.raises(
        DownloadError,
        match=r"Downloading ISIC2018_Task3_Training_Input\.zip from http://127\.0\.0\.1:\d+/2018/.* HTTP 404",
    ):
        download_dataset("ham10000", tmp_path, base_url=server.url)


# --------------------------------------------------------------------------- archives


def _local_isic(tmp_path: Path, **override: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name, data in {**isic2018_training_files(), **override}.items():
        (src / name).write_bytes(data)
    return src


@pytest.mark.parametrize("entry", ["../evil.jpg", "/tmp/skinlesion_evil.jpg", "ok/../../evil.jpg", "C:\\evil.jpg"])
def test_zip_slip_is_rejected(tmp_path: Path, entry: str) -> None:
    bad = _zip({"ISIC2018_Task3_Training_Input/ISIC_0024306.jpg": _jpeg(0), entry: b"payload"})
    src = _local_isic(tmp_path, **{"ISIC2018_Task3_Training_Input.zip": bad})
    out = tmp_path / "deep" / "out"
    with pytest.raises(
        DownloadError, match=rf"entry {re.escape(repr(entry))} would be written outside the destination"
    ):
        download_dataset("ham10000", out, from_dir=src)
    assert not (tmp_path / "deep" / "evil.jpg").exists() and not Path("/tmp/skinlesion_evil.jpg").exists()
    assert not (out / "images").exists()  # nothing unpacked from a rejected archive


def test_damaged_or_foreign_archives(tmp_path: Path) -> None:
    src = _local_isic(tmp_path, **{"ISIC2018_Task3_Training_Input.zip": b"this is not a zip"})
    with pytest.raises(DownloadError, match=r"ISIC2018_Task3_Training_Input\.zip is not a valid zip archive"):
        download_dataset("ham10000", tmp_path / "a", from_dir=src)
    (src / "ISIC2018_Task3_Training_Input.zip").write_bytes(_zip({"readme.md": b"hello"}))
    with pytest.raises(
        DownloadError, match=r"holds no member matching \['\*\.jpg'.*official ISIC2018_Task3_Training_Input\.zip"
    ):
        download_dataset("ham10000", tmp_path / "b", from_dir=src)


def test_layout_check_finds_missing_images_and_bad_truth(tmp_path: Path) -> None:
    files = isic2018_training_files()
    files["ISIC2018_Task3_Training_Input.zip"] = _zip({f"{IDS[0]}.jpg": _jpeg(0)})
    src = _local_isic(tmp_path, **files)
    with pytest.raises(
        DownloadError,
        match=r"lists 3 images; 2 are missing from .*images \(first: \['ISIC_0024307', 'ISIC_0024308'\]\)",
    ):
        download_dataset("ham10000", tmp_path / "a", from_dir=src)
    truth = [["image", *ISIC2018], [IDS[0], "1.0", "1.0", *["0.0"] * 5]]
    (src / "ISIC2018_Task3_Training_GroundTruth.zip").write_bytes(
        _zip({"ISIC2018_Task3_Training_GroundTruth.csv": _csv(truth)})
    )
    with pytest.raises(
        DownloadError, match=r"line 2 \(image ISIC_0024306\): expected exactly one class set to 1; got \['MEL', 'NV'\]"
    ):
        download_dataset("ham10000", tmp_path / "b", from_dir=src)


# --------------------------------------------------------------------------- offline and --from-dir


def test_offline_fails_fast_with_instructions(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_dataset("ham10000", tmp_path, base_url=base)
    assert time.monotonic() - t0 < 3.5
    msg = str(info.value)
    assert f"Cannot reach {base}/2018/ISIC2018_Task3_Training_Input.zip" in msg
    assert "seems to be offline" in msg and "--from-dir DIR" in msg
    assert f"{base}/2018/ISIC2018_Task3_Training_LesionGroupings.csv" in msg  # every file to fetch is listed
    assert not (tmp_path / "downloads" / "ISIC2018_Task3_Training_Input.zip.part").exists()


def test_from_dir_isic_files_without_network(tmp_path: Path) -> None:
    src = _local_isic(tmp_path)
    out = tmp_path / "out"
    download_dataset("ham10000", out, from_dir=src, base_url=f"http://127.0.0.1:{_closed_port()}")
    _assert_ham_layout(out)
    record = read_record(out)["datasets"]["ham10000"]["train"]
    assert record["source"] == "isic-challenge" and all(f["url"] is None for f in record["files"])
    assert sorted(f["from"] for f in record["files"]) == sorted(str(src / n) for n in isic2018_training_files())
    assert sorted(p.name for p in src.iterdir()) == sorted(isic2018_training_files())  # inputs left alone


def test_from_dir_dataverse_tab_metadata_becomes_csv(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    files = dataverse_files(delimiter="\t")
    for name, data in files.items():
        (src / name).write_bytes(data)
    download_dataset("ham10000", tmp_path / "out", from_dir=src)
    rows = _assert_ham_layout(tmp_path / "out")
    assert set(_checksums(tmp_path / "out")) == {*files}  # the names of the files actually used
    assert rows[2] == dict(
        zip(HAM_COLUMNS, ["HAM_0000002", IDS[2], "bkl", "histo", "45.0", "male", "back"], strict=True)
    )
    assert read_record(tmp_path / "out")["datasets"]["ham10000"]["train"]["source"] == "dataverse"


def test_from_dir_incomplete_lists_missing_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "HAM10000_images_part_1.zip").write_bytes(dataverse_files()["HAM10000_images_part_1.zip"])
    with pytest.raises(
        DownloadError,
        match=r"does not hold a complete set of files for ham10000 \(train\): set 'dataverse' lacks "
        r"\['HAM10000_images_part_2\.zip', 'HAM10000_metadata\.csv'\]; set 'isic-challenge' lacks",
    ):
        download_dataset("ham10000", tmp_path / "out", from_dir=src)


# --------------------------------------------------------------------------- idempotence


def test_second_call_downloads_nothing(server: Server, tmp_path: Path) -> None:
    server.serve("/2018", isic2018_training_files())
    download_dataset("ham10000", tmp_path, base_url=server.url)
    n = len(server.requests)
    assert n == 3
    before = (tmp_path / RECORD_NAME).read_text()
    download_dataset("ham10000", tmp_path, base_url=server.url)
    assert len(server.requests) == n
    assert (tmp_path / RECORD_NAME).read_text() == before
    _assert_ham_layout(tmp_path)


def test_kept_archives_are_reused_unless_corrupted(server: Server, tmp_path: Path) -> None:
    files = isic2018_training_files()
    server.serve("/2018", files)
    download_dataset("ham10000", tmp_path, base_url=server.url, keep_archives=True)
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == sorted(files)
    (tmp_path / RECORD_NAME).unlink()
    download_dataset("ham10000", tmp_path, base_url=server.url, keep_archives=True)
    assert len(server.requests) == 3  # complete, verified files are not fetched again
    name = "ISIC2018_Task3_Training_LesionGroupings.csv"
    (tmp_path / "downloads" / name).write_bytes(b"tampered")
    (tmp_path / RECORD_NAME).unlink()
    download_dataset("ham10000", tmp_path, base_url=server.url)
    assert len(server.requests) == 4 and server.gets(name) == [None, None]
    assert (tmp_path / name).read_bytes() == files[name]


# --------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()
    data = typer.Typer()
    data.command("download")(download_command)
    app.add_typer(data, name="data")
    return app


def test_cli_download_list_and_errors(server: Server, tmp_path: Path) -> None:
    server.serve("/2018", isic2018_training_files())
    runner = CliRunner()
    ok = runner.invoke(
        _app(), ["data", "download", "ham10000", "--dest", str(tmp_path / "ham"), "--base-url", server.url]
    )
    assert ok.exit_code == 0, ok.output
    assert "ham10000 (train): 3 images" in ok.output and "3 of 3 files checked against no pinned sha256" in ok.output
    _assert_ham_layout(tmp_path / "ham")

    listed = runner.invoke(_app(), ["data", "download", "isic2019", "--list", "--split", "test"])
    assert listed.exit_code == 0
    assert "https://isic-challenge-data.s3.amazonaws.com/2019/ISIC_2019_Test_Input.zip" in listed.output

    base = f"http://127.0.0.1:{_closed_port()}"
    offline = runner.invoke(_app(), ["data", "download", "isic2018", "-d", str(tmp_path / "x"), "--base-url", base])
    assert offline.exit_code == 1
    assert offline.output.strip().startswith("Error: Cannot reach") and "--from-dir" in offline.output
    assert "Traceback" not in offline.output and offline.output.strip().count("\n") == 0

    unknown = runner.invoke(_app(), ["data", "download", "isic2020"])
    assert unknown.exit_code == 1 and "Unknown dataset 'isic2020'" in unknown.output

    helped = runner.invoke(_app(), ["data", "download", "--help"])
    assert "ISIC2018_Task3_Training_Input/ISIC_*.jpg" in helped.output and "--from-dir" in helped.output
