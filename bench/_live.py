"""A live ``skinlesion serve`` on 127.0.0.1 for the fuzz and load runs: started as the CLI starts it,
in its own process group, with an API key, an audit database and a log file in a work folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._cli import BenchError

KEY = "bench-fuzz-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """``skinlesion serve`` with ``args`` (bundle, MC passes, bounds); :meth:`start` waits for /health."""

    work: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def audit_db(self) -> Path:
        return self.work / "audit.sqlite"

    @property
    def log(self) -> Path:
        return self.work / "serve.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "skinlesion", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--api-key-file", str(self.work / "keys.txt"), "--audit-db", str(self.audit_db), *self.args]

    def start(self, timeout_s: float = 300) -> LiveServer:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "keys.txt").write_text(KEY + "\n")
        self.port = self.port or free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"skinlesion serve exited with {self.proc.returncode}; see {self.log}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"skinlesion serve did not answer /health within {timeout_s:g} s; see {self.log}")

    def health(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/health", headers={"X-API-Key": KEY}, timeout=30)
        return {"status_code": r.status_code, **(r.json() if r.status_code == 200 else {})}

    def memory_kib(self) -> dict[str, int]:
        """``VmHWM`` (peak resident set) and ``VmRSS`` of the server process, KiB."""
        out: dict[str, int] = {}
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
        return out

    def log_counts(self) -> dict[str, int]:
        text = self.log.read_text(errors="replace")
        return {"error_lines": sum(" ERROR " in line for line in text.splitlines()), "tracebacks": text.count("Traceback (most recent call last)")}

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL after 30 s) to the server's own process group; its exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(30)


def audit_rows(db: Path) -> list[dict[str, Any]]:
    from skinlesion.delivery.audit import AuditLog

    return AuditLog(db).rows()
