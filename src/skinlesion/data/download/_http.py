"""HTTP for :mod:`skinlesion.data.download`: reachability check and resumable streaming (stdlib only)."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import Request, getproxies, proxy_bypass, urlopen

from skinlesion import __version__
from skinlesion.data.download._sources import SourceFile, SourceSet
from skinlesion.errors import DownloadError

logger = logging.getLogger("skinlesion.data.download")

#: ``progress(filename, bytes_done, bytes_total_or_None)``, called while a file streams in.
ProgressCallback = Callable[[str, int, "int | None"], None]

CHUNK = 1 << 20
_CONNECT_TIMEOUT = 3.0
_USER_AGENT = f"skinlesion/{__version__} (python-urllib)"


def resolve_url(url: str, base: str | None) -> str:
    if base is None:
        return url
    parts, b = urlsplit(url), urlsplit(base)
    return urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + parts.path, parts.query, ""))


def check_reachable(
    urls: list[str], name: str, split: str, chosen: SourceSet, base: str | None, timeout: float
) -> None:
    """Fail fast, before any download, when the hosts (or the configured proxy) cannot be reached."""
    seen = set()
    for url in urls:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        proxy = getproxies().get(parts.scheme)
        if proxy and not proxy_bypass(host):
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            host, port = p.hostname or "", p.port or 80
        if (host, port) in seen:
            continue
        seen.add((host, port))
        try:
            socket.create_connection((host, port), timeout=min(_CONNECT_TIMEOUT, timeout)).close()
        except OSError as exc:
            wanted = ", ".join(resolve_url(f.url or "", base) for f in chosen.files)
            raise DownloadError(
                f"Cannot reach {url} ({host}:{port}: {exc}): this machine seems to be offline or the host is blocked. "
                f"Download these files on a machine with internet access: {wanted}; copy them into one folder DIR "
                f"and run `skinlesion data download {name} --split {split} --from-dir DIR` "
                f"(download_dataset(..., from_dir=DIR)), which verifies and unpacks them without a network."
            ) from exc


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def http_fetch(url: str, part: Path, f: SourceFile, timeout: float, progress: ProgressCallback | None) -> None:
    """Stream ``url`` into ``part``, resuming from its current size with an HTTP Range request."""
    for _attempt in range(3):
        start = part.stat().st_size if part.is_file() else 0
        if f.size is not None and start > f.size:
            part.unlink()
            start = 0
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            resp = urlopen(Request(url, headers=headers), timeout=timeout)
        except HTTPError as exc:
            if exc.code == 416 and start:
                _, total = _content_range(exc.headers.get("Content-Range"))
                exc.close()
                if total == start:
                    return  # the .part already holds the whole file
                logger.warning("%s: server refused to resume at byte %d (HTTP 416); restarting.", f.filename, start)
                part.unlink()
                continue
            raise DownloadError(f"Downloading {f.filename} from {url} failed: HTTP {exc.code} {exc.reason}.") from exc
        except (URLError, OSError, HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"Downloading {f.filename} from {url} failed: {reason}. Run again to retry.") from exc
        with resp:
            mode = "ab"
            if resp.status == 206:
                first, _ = _content_range(resp.headers.get("Content-Range"))
                if first != start:
                    logger.warning("%s: server resumed at byte %s, not %d; restarting.", f.filename, first, start)
                    part.unlink()
                    continue
            elif resp.status == 200:
                if start:
                    logger.warning("%s: server ignored the Range request; downloading from the start.", f.filename)
                start, mode = 0, "wb"
            else:
                raise DownloadError(f"Downloading {f.filename} from {url} failed: unexpected HTTP {resp.status}.")
            length_header = resp.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            total = start + length if length is not None else None
            if f.size is not None and total is not None and total != f.size:
                part.unlink(missing_ok=True)
                raise DownloadError(
                    f"Size mismatch for {f.filename}: expected {f.size} bytes, got {total} bytes announced by "
                    f"{url} (Content-Length); the partial file was deleted."
                )
            received = 0
            try:
                with part.open(mode) as fh:
                    if progress is not None:
                        progress(f.filename, start, total)
                    while chunk := resp.read(CHUNK):
                        fh.write(chunk)
                        received += len(chunk)
                        if progress is not None:
                            progress(f.filename, start + received, total)
            except (OSError, HTTPException) as exc:
                raise DownloadError(
                    f"Downloading {f.filename} was interrupted after {start + received} bytes ({exc!r}); "
                    f"run again to resume from {part}."
                ) from exc
        if length is not None and received != length:
            raise DownloadError(
                f"Downloading {f.filename}: connection closed after {start + received} of {total} bytes "
                f"(Content-Length); run again to resume from {part}."
            )
        return
    raise DownloadError(f"Downloading {f.filename} from {url} failed: the server could not resume {part}; delete it.")
