"""Download HAM10000, ISIC 2018 Task 3 and ISIC 2019 from their official sources, verify and unpack.

Downloads resume (HTTP Range on ``<file>.part``), are checked against the Content-Length and, where
the registry pins them, the size and sha256; every sha256 is recorded in ``CHECKSUMS.sha256``.
Offline machines use ``from_dir``: fetch the listed files elsewhere, copy them into one folder and
this module verifies and unpacks them without touching the network. Only the standard library is
used for HTTP (:mod:`._http`). The sources live in :mod:`._sources`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from skinlesion import __version__
from skinlesion._hashing import sha256_file
from skinlesion.data.download._http import CHUNK, ProgressCallback, check_reachable, http_fetch, resolve_url
from skinlesion.data.download._sources import DATASET_SPECS, DatasetSpec, SourceFile, SourceSet
from skinlesion.errors import DownloadError

LAYOUT = """\
Layout written under DEST (what the dataset readers expect):

  ham10000 (split train)
    HAM10000_metadata.csv   lesion_id,image_id,dx,dx_type,age,sex,localization
    images/ISIC_*.jpg
  isic2018
    train  ISIC2018_Task3_Training_GroundTruth.csv
           ISIC2018_Task3_Training_LesionGroupings.csv
           HAM10000_metadata.csv (derived: lesion ids for lesion splits)
           ISIC2018_Task3_Training_Input/ISIC_*.jpg
    val    ISIC2018_Task3_Validation_GroundTruth.csv
           ISIC2018_Task3_Validation_Input/ISIC_*.jpg
    test   ISIC2018_Task3_Test_GroundTruth.csv
           ISIC2018_Task3_Test_Input/ISIC_*.jpg
  isic2019
    train  ISIC_2019_Training_GroundTruth.csv
           ISIC_2019_Training_Metadata.csv
           ISIC_2019_Training_Input/ISIC_*.jpg
    test   ISIC_2019_Test_GroundTruth.csv
           ISIC_2019_Test_Metadata.csv
           ISIC_2019_Test_Input/ISIC_*.jpg
  every dataset
    licenses/<archive>/    license and attribution texts of the archives
    CHECKSUMS.sha256       sha256 of every file fetched (sha256sum format)
    download_record.json   what was fetched, from where, sizes, sha256s
    downloads/             archives in progress (*.part); deleted after

A HAM10000_metadata.csv derived from the ISIC 2018 Task 3 ground truth and
lesion groupings has no age, sex or body site (left empty/unknown); the
Dataverse archives, passed with --from-dir, have them.
"""
__doc__ = (__doc__ or "") + "\n" + LAYOUT

logger = logging.getLogger("skinlesion.data.download")

#: Names accepted by :func:`download_dataset`.
DATASETS: tuple[str, ...] = tuple(DATASET_SPECS)
ENV_BASE_URL = "SKINLESION_DOWNLOAD_BASE_URL"
RECORD_NAME = "download_record.json"
CHECKSUMS_NAME = "CHECKSUMS.sha256"
DOWNLOADS_DIR = "downloads"


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of dataset ``name``; an unknown name is an error listing the known ones."""
    key = str(name).strip().lower()
    if key not in DATASET_SPECS:
        raise DownloadError(f"Unknown dataset {name!r}: expected one of {list(DATASETS)}.")
    return DATASET_SPECS[key]


def _split_names(spec: DatasetSpec, split: str) -> list[str]:
    key = {"validation": "val", "valid": "val", "training": "train"}.get(split.strip().lower(), split.strip().lower())
    if key == "all":
        return list(spec.splits)
    if key not in spec.splits:
        raise DownloadError(
            f"The 'split' parameter must be one of {[*spec.splits, 'all']} for {spec.name}. Got {split!r} instead."
        )
    return [key]


def source_sets(name: str, split: str = "train") -> tuple[SourceSet, ...]:
    """All alternative source sets of one split, preferred first."""
    spec = get_spec(name)
    keys = _split_names(spec, split)
    if len(keys) != 1:
        raise DownloadError(f"The 'split' parameter must name one split of {list(spec.splits)}. Got {split!r} instead.")
    return spec.splits[keys[0]]


def list_sources(name: str, split: str = "train") -> tuple[SourceFile, ...]:
    """The files :func:`download_dataset` fetches for ``name``/``split`` when online."""
    sets = source_sets(name, split)
    return next((s for s in sets if s.downloadable), sets[0]).files


def read_record(dest: str | os.PathLike[str]) -> dict:
    """The download record of ``dest`` (empty when none was written yet)."""
    path = Path(dest) / RECORD_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable download record %s (%s).", path, exc)
        return {}


def download_dataset(
    name: str,
    dest: str | os.PathLike[str],
    *,
    split: str = "train",
    from_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    sources: Sequence[SourceFile] | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 30.0,
    keep_archives: bool = False,
) -> Path:
    """Fetch (or take from ``from_dir``), verify and unpack one dataset split into ``dest``.

    Args:
        name: one of :data:`DATASETS`.
        dest: dataset root; created if needed. See :data:`LAYOUT`.
        split: ``train``, ``val``, ``test`` (where the dataset has it) or ``all``.
        from_dir: folder holding the source files already; nothing is downloaded.
        base_url: replaces scheme and host of every URL (mirrors, tests); default from the
            ``SKINLESION_DOWNLOAD_BASE_URL`` environment variable.
        sources: replacement for the files of one registry source set (same file names), e.g.
            with pinned ``sha256``/``size`` or other URLs.
        progress: called as ``progress(filename, done, total)`` while downloading.
        timeout: socket timeout in seconds for each network operation.
        keep_archives: keep the downloaded archives in ``dest/downloads`` after unpacking.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: unknown name or split, offline, HTTP failure, size or checksum mismatch,
            unsafe or damaged archive, incomplete layout. The message says what to do.
    """
    spec = get_spec(name)
    splits = _split_names(spec, split)
    if sources is not None and len(splits) != 1:
        raise DownloadError(f"The 'sources' parameter applies to one split; got split={split!r}.")
    if not timeout > 0:
        raise DownloadError(f"The 'timeout' parameter must be a positive number of seconds. Got {timeout!r} instead.")
    base = base_url if base_url is not None else (os.environ.get(ENV_BASE_URL) or None)
    if base is not None and urlsplit(base).scheme not in ("http", "https"):
        raise DownloadError(
            f"The 'base_url' parameter must be an http(s) URL such as http://mirror:8000. Got {base!r}."
        )
    local = Path(from_dir).expanduser() if from_dir is not None else None
    if local is not None and not local.is_dir():
        raise DownloadError(f"The 'from_dir' folder {local} does not exist or is not a folder.")
    root = Path(dest).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for key in splits:
        candidates = spec.splits[key]
        if sources is not None:
            candidates = (_override(candidates, sources, spec.name, key),)
        _fetch_split(spec, key, candidates, root, local, base, progress, timeout, keep_archives)
    return root


def _override(candidates: tuple[SourceSet, ...], sources: Sequence[SourceFile], name: str, split: str) -> SourceSet:
    wanted = sorted(f.filename for f in sources)
    for cand in candidates:
        if sorted(f.filename for f in cand.files) == wanted:
            return replace(cand, files=tuple(sources))
    options = [sorted(f.filename for f in c.files) for c in candidates]
    raise DownloadError(
        f"The 'sources' parameter must list the files of one source set of {name} ({split}): {options}. Got {wanted}."
    )


def _fetch_split(
    spec: DatasetSpec,
    split: str,
    candidates: tuple[SourceSet, ...],
    root: Path,
    local: Path | None,
    base: str | None,
    progress: ProgressCallback | None,
    timeout: float,
    keep_archives: bool,
) -> None:
    record = read_record(root)
    done = record.get("datasets", {}).get(spec.name, {}).get(split)
    if done and _is_complete(done, candidates, root):
        logger.info(
            "%s (%s) is already complete in %s; delete %s to fetch it again.", spec.name, split, root, RECORD_NAME
        )
        return
    if local is not None:
        chosen, paths = _pick_local(candidates, local, spec.name, split)
        fetched = {f.filename: (paths[f.filename], _verify(paths[f.filename], f, delete=False)) for f in chosen.files}
    else:
        chosen = next((c for c in candidates if c.downloadable), None)
        if chosen is None:
            raise DownloadError(_manual_message(spec.name, split, candidates))
        fetched = _download_set(chosen, root, spec.name, split, base, progress, timeout)
    for f in chosen.files:
        path = fetched[f.filename][0]
        if f.is_archive:
            _unpack_zip(path, f, root)
        elif f.target is not None:
            _place_file(path, root / f.target)
    if chosen.postprocess is not None:
        chosen.postprocess(root)
    n_images = _check_layout(chosen, root, spec.name, split)
    _write_checksums(root, {path.name: sha for path, (_, sha) in fetched.values()})
    files = [
        {
            "filename": f.filename,
            "url": resolve_url(f.url, base) if local is None and f.url else None,
            "from": str(fetched[f.filename][0]) if local is not None else None,
            "size": fetched[f.filename][1][0],
            "sha256": fetched[f.filename][1][1],
            "pinned": f.sha256 is not None,
        }
        for f in chosen.files
    ]
    entry = {
        "source": chosen.name,
        "completed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "skinlesion": __version__,
        "images": n_images,
        "files": files,
    }
    record.setdefault("datasets", {}).setdefault(spec.name, {})[split] = entry
    _atomic_write(root / RECORD_NAME, json.dumps(record, indent=2) + "\n")
    if local is None and not keep_archives:
        for path, _ in fetched.values():
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (root / DOWNLOADS_DIR).rmdir()
    logger.info("%s (%s): %d images ready in %s", spec.name, split, n_images, root)


def _is_complete(done: dict, candidates: tuple[SourceSet, ...], root: Path) -> bool:
    chosen = next((c for c in candidates if c.name == done.get("source")), None)
    if chosen is None:
        return False
    recorded = {e.get("filename"): e.get("sha256") for e in done.get("files", [])}
    if set(recorded) != {f.filename for f in chosen.files}:
        return False
    if any(f.sha256 and f.sha256.lower() != recorded[f.filename] for f in chosen.files):
        return False
    needed = (chosen.index_csv, *chosen.outputs)
    return all((root / p).is_file() for p in needed) and (root / chosen.image_dir).is_dir()


def _manual_message(name: str, split: str, candidates: tuple[SourceSet, ...]) -> str:
    sets = "; ".join(f"{c.name}: {', '.join(f.filename for f in c.files)} ({c.note})" for c in candidates)
    return (
        f"{name} ({split}) has no direct download URL. Get one complete set of files ({sets}) and pass --from-dir DIR."
    )


def _pick_local(
    candidates: tuple[SourceSet, ...], local: Path, name: str, split: str
) -> tuple[SourceSet, dict[str, Path]]:
    missing = []
    for cand in candidates:
        found = {
            f.filename: next((local / n for n in (f.filename, *f.aliases) if (local / n).is_file()), None)
            for f in cand.files
        }
        if all(found.values()):
            return cand, found  # type: ignore[return-value]
        missing.append(f"set '{cand.name}' lacks {[n for n, p in found.items() if p is None]}")
    raise DownloadError(
        f"--from-dir {local} does not hold a complete set of files for {name} ({split}): {'; '.join(missing)}."
    )


def _download_set(
    chosen: SourceSet,
    root: Path,
    name: str,
    split: str,
    base: str | None,
    progress: ProgressCallback | None,
    timeout: float,
) -> dict[str, tuple[Path, tuple[int, str]]]:
    downloads = root / DOWNLOADS_DIR
    downloads.mkdir(parents=True, exist_ok=True)
    recorded = _read_checksums(root)
    fetched: dict[str, tuple[Path, tuple[int, str]]] = {}
    todo = []
    for f in chosen.files:
        final = downloads / f.filename
        if final.is_file():
            try:
                fetched[f.filename] = (final, _verify(final, f, delete=True, fallback_sha=recorded.get(f.filename)))
                logger.info("%s is already downloaded and verified; not downloading it again.", f.filename)
                continue
            except DownloadError as exc:
                logger.warning("%s Downloading it again.", exc)
        todo.append(f)
    urls = {f.filename: resolve_url(f.url or "", base) for f in todo}
    if todo:
        check_reachable(list(urls.values()), name, split, chosen, base, timeout)
    for f in todo:
        part = downloads / (f.filename + ".part")
        if f.size is None or not part.is_file() or part.stat().st_size != f.size:
            http_fetch(urls[f.filename], part, f, timeout, progress)
        size_sha = _verify(part, f, delete=True)
        final = downloads / f.filename
        os.replace(part, final)
        fetched[f.filename] = (final, size_sha)
    return fetched


def _verify(path: Path, f: SourceFile, *, delete: bool, fallback_sha: str | None = None) -> tuple[int, str]:
    """Check size and sha256 against the registry; on mismatch delete ``path`` if ``delete``."""
    deleted = "; the file was deleted, run again to download it anew" if delete else ""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        if delete:
            path.unlink()
        raise DownloadError(
            f"Size mismatch for {f.filename}: expected {f.size} bytes, got {size} bytes ({path}){deleted}."
        )
    digest = sha256_file(path)
    expected = (f.sha256 or fallback_sha or "").lower()
    if expected and digest != expected:
        if delete:
            path.unlink()
        what = "pinned" if f.sha256 else f"recorded in {CHECKSUMS_NAME}"
        raise DownloadError(
            f"sha256 mismatch for {f.filename}: expected {expected} ({what}), got {digest} ({path}){deleted}."
        )
    if f.sha256 is None:
        logger.warning(
            "%s was not verified against a pinned sha256 (none is known); its sha256 %s is recorded in %s.",
            f.filename,
            digest,
            CHECKSUMS_NAME,
        )
    return size, digest


def _check_entry(archive: Path, entry: str) -> None:
    name = entry.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
        raise DownloadError(
            f"Refusing to unpack {archive}: entry {entry!r} would be written outside the destination "
            "(absolute path or '..'); the archive is damaged or malicious."
        )


def _unpack_zip(archive: Path, f: SourceFile, root: Path) -> int:
    """Extract the members matching ``f.extract`` into their folders, flattened; skip those already there."""
    count = 0
    tmp: Path | None = None
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_entry(archive, info.filename)
            for info in infos:
                parts = PurePosixPath(info.filename.replace("\\", "/")).parts
                if info.is_dir() or not parts or "__MACOSX" in parts or parts[-1].startswith("._"):
                    continue
                folder = f.folder_for(parts[-1])
                if folder is None:
                    continue
                target = root / folder / parts[-1]
                count += 1
                if target.is_file() and target.stat().st_size == info.file_size:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".tmp")
                with zf.open(info) as src, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, target)
                tmp = None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise DownloadError(f"{archive} is not a valid zip archive ({exc}); delete it and download it again.") from exc
    if count == 0:
        raise DownloadError(
            f"{archive} holds no member matching {[p for p, _ in f.extract]}; is it the official {f.filename}?"
        )
    return count


def _place_file(src: Path, target: Path) -> None:
    """Copy a plain file into place; a tab-separated table (Dataverse ``.tab``) becomes a CSV."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with src.open(encoding="utf-8-sig", errors="replace") as fh:
        first = fh.readline()
    if target.suffix.lower() == ".csv" and "\t" in first and "," not in first:
        with src.open(newline="", encoding="utf-8-sig") as fin, tmp.open("w", newline="", encoding="utf-8") as fout:
            csv.writer(fout).writerows(csv.reader(fin, delimiter="\t"))
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, target)


def _check_layout(chosen: SourceSet, root: Path, name: str, split: str) -> int:
    missing = [p for p in (chosen.index_csv, *chosen.outputs) if not (root / p).is_file()]
    if missing:
        raise DownloadError(
            f"After unpacking {name} ({split}) these files are missing under {root}: {missing}. "
            "Are the source files the official ones?"
        )
    index = root / chosen.index_csv
    with index.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if chosen.id_column not in (reader.fieldnames or []):
            raise DownloadError(f"{index}: expected a {chosen.id_column!r} column; got {reader.fieldnames}.")
        ids = [row[chosen.id_column] for row in reader]
    images = root / chosen.image_dir
    absent = [i for i in ids if not (images / f"{i}.jpg").is_file()]
    if not ids or absent:
        raise DownloadError(
            f"{index} lists {len(ids)} images; {len(absent)} are missing from {images} (first: {absent[:5]})."
            if ids
            else f"{index} lists no images."
        )
    return len(ids)


def _read_checksums(root: Path) -> dict[str, str]:
    path = root / CHECKSUMS_NAME
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition("  ")
        if name:
            out[name.lstrip("*")] = digest.lower()
    return out


def _write_checksums(root: Path, new: dict[str, str]) -> None:
    sums = _read_checksums(root)
    for name, digest in new.items():
        if sums.get(name, digest) != digest:
            logger.warning("sha256 of %s changed since the last download: was %s, now %s.", name, sums[name], digest)
    sums.update(new)
    _atomic_write(root / CHECKSUMS_NAME, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
