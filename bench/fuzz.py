"""Hostile input, load and faults against the real service and batch predict (each prints one JSON object).

    python bench/fuzz.py fuzz  [--n 1200] [--seconds 1800]     # a live `skinlesion serve` on 127.0.0.1
    python bench/fuzz.py load  [--clients 16] [--seconds 60]   # concurrent clients for a fixed time
    python bench/fuzz.py fault [--images 300] [--kills 6]      # kill -9 during `skinlesion predict`, resume

``fuzz`` starts ``skinlesion serve`` (packaged default bundle unless ``--bundle``; an API key; an
audit database in the work folder) and sends about ``--n`` generated requests
(:mod:`bench._fuzz_cases`: every mode and format Pillow writes, transparent, 16-bit, rotated,
animated images, truncations and bit flips of the packaged HAM10000 sample files, random bytes,
decompression bombs, huge and tiny sizes, files over the cap, hostile file names and form fields,
missing or wrong keys), one at a time, stopping after ``--seconds``. It reports the answers by
status, every 5xx, whether every valid image was answered 200 (and said what was converted),
whether every refusal had its documented status and reason, the audit rows against the successful
predictions, the server's peak resident memory (``VmHWM``) and whether it is healthy afterwards.

``load`` starts the service the same way and runs ``--clients`` threads that post the packaged
sample images to ``/predict`` for ``--seconds`` (a 503 is retried after its ``Retry-After``):
throughput, latency percentiles of the answered requests, how many 503s, and whether every answered
prediction has its audit row.

``fault`` writes ``--images`` synthetic lesion files (a few of them unreadable) and runs
``skinlesion predict`` over them twice: once uninterrupted, once killed with SIGKILL at random
moments spread over the run (``--kills`` times; the run is started again after each kill, resuming). It compares the
final predictions.csv and rejected.csv with the uninterrupted run's and counts the audit rows.

Every child process runs in its own process group and is stopped by its id. The numbers depend on
the machine and its load; run niced on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/fuzz.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

MiB = 2**20


def _server_args(args: argparse.Namespace) -> list[str]:
    out = ["--bundle", args.bundle, "--max-in-flight", str(args.max_in_flight), "--max-active", str(args.max_active),
           "--request-timeout", str(args.request_timeout)]
    return out + (["--mc-samples", str(args.mc_samples)] if args.mc_samples is not None else [])


def _work(args: argparse.Namespace, name: str) -> Path:
    return Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix=f"skinlesion-{name}-"))


def _send(client: Any, case: Any) -> tuple[int | None, dict[str, Any], str | None]:
    import httpx

    try:
        if case.raw_body is not None:
            r = client.post(case.route, content=case.raw_body, headers={**case.headers, "Content-Type": "application/json"})
        elif case.filename is None:
            r = client.post(case.route, data={**case.form, "note": "no file"}, headers=case.headers)
        else:
            r = client.post(case.route, files={"file": (case.filename, case.data, "application/octet-stream")}, data=case.form, headers=case.headers)
    except httpx.TransportError as e:
        return None, {}, f"{type(e).__name__}: {e}"
    try:
        body = r.json()
    except ValueError:
        body = {"not_json": r.text[:200]}
    return r.status_code, body, None


def _reason(body: dict[str, Any]) -> str | None:
    detail = body.get("detail")
    return detail.get("reason") if isinstance(detail, dict) else None


def run_fuzz(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from bench._fuzz_cases import cases
    from bench._live import LiveServer, audit_rows
    from skinlesion.delivery.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

    work = _work(args, "fuzz")
    server = LiveServer(work, _server_args(args)).start()
    t0 = time.monotonic()
    seen: list[dict[str, Any]] = []
    max_rss = 0
    stopped_early = False
    try:
        with httpx.Client(base_url=server.url, timeout=args.client_timeout) as client:
            for i, case in enumerate(cases(args.n, args.seed, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS)):
                if time.monotonic() - t0 > args.seconds:
                    stopped_early = True
                    break
                status, body, error = _send(client, case)
                row = {"kind": case.kind, "name": case.name, "route": case.route, "status": status, "reason": _reason(body),
                       "expect": case.expect, "error": error, "bytes": len(case.data), "mode": case.mode}
                if status == 200:
                    row["request_id"] = body.get("request_id")
                    row["converted"] = body.get("converted_from") is not None
                    row["converts"] = case.converts
                if status is None or status >= 500:
                    row["alive"] = server.proc is not None and server.proc.poll() is None
                    row["body"] = str(body)[:300]
                seen.append(row)
                if i % 25 == 0:
                    max_rss = max(max_rss, server.memory_kib().get("VmRSS", 0))
        health = server.health()
        memory = server.memory_kib()
        alive = server.proc is not None and server.proc.poll() is None
        logs = server.log_counts()
    finally:
        exit_code = server.stop()
    rows = audit_rows(server.audit_db)
    return _fuzz_summary(args, seen, rows, health, memory, max(max_rss, memory.get("VmRSS", 0)), alive, logs, exit_code,
                         time.monotonic() - t0, stopped_early, work)


def _fuzz_summary(
    args: argparse.Namespace, seen: list[dict[str, Any]], audit: list[dict[str, Any]], health: dict[str, Any], memory: dict[str, int],
    max_rss_kib: int, alive: bool, logs: dict[str, int], exit_code: int | None, seconds: float, stopped_early: bool, work: Path,
) -> dict[str, Any]:
    def few(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: r[k] for k in ("kind", "name", "status", "reason", "error") if r.get(k) is not None} for r in items[:10]]

    by_kind = {k: [r for r in seen if r["kind"] == k] for k in ("valid", "policy", "mutated", "random")}
    valid_not_200 = [r for r in by_kind["valid"] if r["status"] != 200]
    not_converted = [r for r in by_kind["valid"] if r["status"] == 200 and r.get("converts") and not r["converted"]]
    policy_wrong = [r for r in by_kind["policy"] if (r["status"], r["reason"]) != tuple(r["expect"])]
    random_not_4xx = [r for r in by_kind["random"] if r["status"] is None or not 400 <= r["status"] < 500]
    mutated_5xx = [r for r in by_kind["mutated"] if r["status"] is None or r["status"] >= 500]
    served = [r for r in seen if r["status"] == 200]
    audited = {r["request_id"] for r in audit}
    return {
        "command": "fuzz",
        "settings": {"n": args.n, "seconds_limit": args.seconds, "seed": args.seed, "bundle": args.bundle, "mc_samples": args.mc_samples,
                     "max_in_flight": args.max_in_flight, "max_active": args.max_active, "request_timeout_s": args.request_timeout,
                     "clients": 1, "work_dir": str(work)},
        "inputs": len(seen),
        "stopped_at_time_limit": stopped_early,
        "seconds": round(seconds, 1),
        "by_kind": {k: len(v) for k, v in by_kind.items()},
        "by_route": dict(Counter(r["route"] for r in seen)),
        "status_counts": {str(k): v for k, v in sorted(Counter(r["status"] for r in seen).items(), key=lambda kv: str(kv[0]))},
        "responses_5xx": len([r for r in seen if r["status"] is not None and r["status"] >= 500]),
        "responses_5xx_examples": few([r for r in seen if r["status"] is not None and r["status"] >= 500]),
        "transport_errors": len([r for r in seen if r["status"] is None]),
        "transport_error_examples": few([r for r in seen if r["status"] is None]),
        "valid": {"n": len(by_kind["valid"]), "answered_200": len(by_kind["valid"]) - len(valid_not_200),
                  "not_200": few(valid_not_200), "non_rgb_without_converted_from": len(not_converted),
                  "modes": dict(Counter(str(r["mode"]) for r in by_kind["valid"]))},
        "policy": {"n": len(by_kind["policy"]), "as_documented": len(by_kind["policy"]) - len(policy_wrong), "not_as_documented": few(policy_wrong),
                   "reasons": dict(Counter(f"{r['status']} {r['reason']}" for r in by_kind["policy"]))},
        "mutated": {"n": len(by_kind["mutated"]), "status_counts": dict(Counter(str(r["status"]) for r in by_kind["mutated"])),
                    "5xx_or_no_answer": few(mutated_5xx)},
        "random": {"n": len(by_kind["random"]), "not_4xx": few(random_not_4xx), "reasons": dict(Counter(str(r["reason"]) for r in by_kind["random"]))},
        "audit": {"rows": len(audit), "successful_predictions": len(served), "one_row_per_success": len(audit) == len(served)
                  and audited == {r["request_id"] for r in served}},
        "server": {"peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1), "rss_at_end_mib": round(memory.get("VmRSS", 0) / 1024, 1),
                   "max_sampled_rss_mib": round(max_rss_kib / 1024, 1), "alive_after": alive, "health_after": health.get("status"),
                   "requests_after": health.get("requests"), "log": logs, "exit_status_after_sigterm": exit_code},
    }


# -- load ----------------------------------------------------------------------------------------------------
def run_load(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from bench._fuzz_cases import SAMPLES
    from bench._live import KEY, LiveServer, audit_rows

    uploads = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*.jpg"))]
    work = _work(args, "load")
    server = LiveServer(work, _server_args(args)).start()
    results: list[tuple[int | None, float, str | None]] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.seconds

    def client(k: int) -> None:
        rnd = random.Random(args.seed + k)
        with httpx.Client(base_url=server.url, timeout=args.client_timeout, headers={"X-API-Key": KEY}) as c:
            while time.monotonic() < deadline:
                name, data = uploads[rnd.randrange(len(uploads))]
                t = time.monotonic()
                try:
                    r = c.post("/predict", files={"file": (name, data, "image/jpeg")})
                    status, rid = r.status_code, (r.json().get("request_id") if r.status_code == 200 else None)
                except httpx.TransportError:
                    status, rid = None, None
                with lock:
                    results.append((status, time.monotonic() - t, rid))
                if status == 503:
                    time.sleep(min(float(r.headers.get("retry-after", 1)), max(deadline - time.monotonic(), 0)))

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        health, memory, logs = server.health(), server.memory_kib(), server.log_counts()
    finally:
        server.stop()
    audit = audit_rows(server.audit_db)
    ok = np.array([s for st, s, _ in results if st == 200])
    served_ids = {rid for st, _, rid in results if st == 200}
    return {
        "command": "load",
        "settings": {"clients": args.clients, "seconds": args.seconds, "bundle": args.bundle, "mc_samples": args.mc_samples,
                     "max_in_flight": args.max_in_flight, "max_active": args.max_active, "request_timeout_s": args.request_timeout,
                     "images": f"{len(uploads)} packaged HAM10000 samples (JPEG)"},
        "wall_seconds": round(wall, 1),
        "requests": len(results),
        "status_counts": {str(k): v for k, v in Counter(st for st, _, _ in results).items()},
        "answered_200": int(ok.size),
        "throughput_per_s": round(ok.size / wall, 3),
        "latency_200_s": {"p50": _pct(ok, 50), "p90": _pct(ok, 90), "p99": _pct(ok, 99), "max": _pct(ok, 100)},
        "responses_503": sum(st == 503 for st, _, _ in results),
        "responses_5xx_other": sum(st is not None and st >= 500 and st != 503 for st, _, _ in results),
        "transport_errors": sum(st is None for st, _, _ in results),
        "audit": {"rows": len(audit), "every_200_audited_once": len(audit) == ok.size and {r["request_id"] for r in audit} == served_ids},
        "server": {"peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1), "health_after": health.get("status"),
                   "requests_after": health.get("requests"), "log": logs},
    }


def _pct(a: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(a, q)), 3) if a.size else None


# -- fault ---------------------------------------------------------------------------------------------------
def _write_inputs(folder: Path, n: int, seed: int) -> dict[str, int]:
    from PIL import Image

    from skinlesion.data.synthetic import generate_lesion

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    kinds: Counter[str] = Counter()
    for i in range(n):
        if i % 40 == 7:
            (folder / f"bad_{i:04d}.jpg").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
            kinds["unreadable"] += 1
            continue
        label = ["MEL", "NV", "BCC", "BKL", "AKIEC", "DF", "VASC"][i % 7]
        image = Image.fromarray(generate_lesion(label, i, size=(int(rng.integers(60, 160)), int(rng.integers(80, 200))), hair=False, vignette=False)[0])
        fmt = ("jpg", "png", "gif")[i % 3]
        (image.convert("P") if fmt == "gif" else image).save(folder / f"img_{i:04d}.{fmt}")
        kinds[fmt] += 1
    return dict(kinds)


def run_fault(args: argparse.Namespace) -> dict[str, Any]:
    work = _work(args, "fault")
    src = work / "images"
    kinds = _write_inputs(src, args.images, args.seed)

    def command(out: str) -> list[str]:
        cmd = [sys.executable, "-m", "skinlesion", "predict", str(src), "--out", str(work / out), "--bundle", args.bundle,
               "--batch-size", str(args.batch_size), "--workers", "0", "--audit-db", str(work / f"{out}.sqlite")]
        return cmd + (["--mc-samples", str(args.mc_samples)] if args.mc_samples is not None else [])

    t = time.monotonic()
    ref = subprocess.run(command("reference"), capture_output=True, start_new_session=True)
    ref_seconds = time.monotonic() - t
    if ref.returncode != 0:
        return {"command": "fault", "error": f"the uninterrupted run failed ({ref.returncode}): {ref.stderr.decode()[-2000:]}"}
    rnd = random.Random(args.seed)
    kills: list[dict[str, Any]] = []
    starts = 0
    expected = args.images - kinds.get("unreadable", 0)
    batch_seconds = ref_seconds / max(1, -(-args.images // args.batch_size))
    csv_path = work / "faulted" / "predictions.csv"
    # Random moments spread over the run: once a random number of rows is on disk (one each, drawn
    # at once and sorted), and a random part of a batch's time later (mid-batch, mid-write); a target
    # already reached kills the next start while it loads the model.
    targets = sorted(rnd.randrange(expected) for _ in range(args.kills))
    t = time.monotonic()
    while True:
        starts += 1
        proc = subprocess.Popen(command("faulted"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        if len(kills) < args.kills:
            start_rows = _count_rows(csv_path)
            target = targets[len(kills)]
            extra = rnd.uniform(0, batch_seconds)
            while proc.poll() is None and _count_rows(csv_path) < target:
                time.sleep(0.02)
            time.sleep(extra)
            if proc.poll() is None:
                rows_before = _count_rows(csv_path)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills.append({"rows_at_start": start_rows, "target_rows": target, "extra_s": round(extra, 2), "rows_on_disk_at_kill": rows_before})
                continue
        proc.wait()
        if proc.returncode == 0:
            break
        if starts > args.kills + 5:
            return {"command": "fault", "error": f"the faulted run keeps failing (exit {proc.returncode})"}
    faulted_seconds = time.monotonic() - t
    return _fault_summary(args, work, kinds, ref_seconds, faulted_seconds, kills, starts)


def _count_rows(path: Path) -> int:
    return path.read_bytes().count(b"\n") - 1 if path.is_file() else 0


def _fault_summary(
    args: argparse.Namespace, work: Path, kinds: dict[str, int], ref_seconds: float, faulted_seconds: float,
    kills: list[dict[str, Any]], starts: int,
) -> dict[str, Any]:
    import csv

    from bench._live import audit_rows

    def table(name: str) -> tuple[list[str], list[list[str]]]:
        with (work / name).open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        return rows[0], rows[1:]

    header, ref_rows = table("reference/predictions.csv")
    _, got_rows = table("faulted/predictions.csv")
    paths = [r[header.index("path")] for r in got_rows]
    expected_images = args.images - kinds.get("unreadable", 0)
    differing = [(a, b) for a, b in zip(ref_rows, got_rows) if a != b]
    classes = header[1: header.index("decision")]
    max_prob_diff = max((abs(float(a[1 + k]) - float(b[1 + k])) for a, b in zip(ref_rows, got_rows) for k in range(len(classes))), default=0.0)
    ref_audit, got_audit = audit_rows(work / "reference.sqlite"), audit_rows(work / "faulted.sqlite")
    return {
        "command": "fault",
        "settings": {"images": args.images, "inputs": kinds, "kills": args.kills, "batch_size": args.batch_size, "bundle": args.bundle,
                     "mc_samples": args.mc_samples, "seed": args.seed, "work_dir": str(work)},
        "uninterrupted_seconds": round(ref_seconds, 1),
        "faulted_seconds_total": round(faulted_seconds, 1),
        "kills": kills,
        "starts": starts,
        "predictions_rows": {"reference": len(ref_rows), "faulted": len(got_rows), "expected": expected_images},
        "every_image_exactly_once": len(paths) == len(set(paths)) == expected_images,
        "predictions_csv_bytes_equal": (work / "reference/predictions.csv").read_bytes() == (work / "faulted/predictions.csv").read_bytes(),
        "rows_differing": len(differing) + abs(len(ref_rows) - len(got_rows)),
        "max_probability_difference": max_prob_diff,
        "rejected_csv_equal": _sorted_rows(work / "reference/rejected.csv") == _sorted_rows(work / "faulted/rejected.csv"),
        "audit": {"reference_rows": len(ref_audit), "faulted_rows": len(got_audit),
                  "faulted_one_row_per_prediction": sorted(r["input_name"] for r in got_audit) == sorted(paths),
                  "journal_left": (work / "faulted" / "audit-pending.jsonl").exists()},
    }


def _sorted_rows(path: Path) -> list[str]:
    return sorted(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else []


# -- command line ------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", default="default", help="Bundle folder or 'default' (the packaged one).")
    common.add_argument("--mc-samples", type=int, default=None, help="MC-dropout passes (default: the bundle's).")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--work-dir", default=None, help="Where the server's audit database, log and files go (default: a temporary folder).")
    served = argparse.ArgumentParser(add_help=False)
    served.add_argument("--max-in-flight", type=int, default=8)
    served.add_argument("--max-active", type=int, default=2)
    served.add_argument("--request-timeout", type=float, default=60.0)
    served.add_argument("--client-timeout", type=float, default=300.0, help="Seconds a client waits for one answer.")
    f = sub.add_parser("fuzz", parents=[common, served], help="Generated hostile inputs against a live server.")
    f.add_argument("--n", type=int, default=1200, help="Requests to send (at most).")
    f.add_argument("--seconds", type=float, default=1800.0, help="Stop sending after this many seconds.")
    f.set_defaults(run=run_fuzz)
    ld = sub.add_parser("load", parents=[common, served], help="Concurrent clients for a fixed time.")
    ld.add_argument("--clients", type=int, default=16)
    ld.add_argument("--seconds", type=float, default=60.0)
    ld.set_defaults(run=run_load)
    ft = sub.add_parser("fault", parents=[common], help="kill -9 during batch predict, resume, compare.")
    ft.add_argument("--images", type=int, default=300)
    ft.add_argument("--kills", type=int, default=6)
    ft.add_argument("--batch-size", type=int, default=8)
    ft.set_defaults(run=run_fault)
    args = p.parse_args(argv)
    for name in ("n", "seconds", "clients", "images", "batch_size"):
        if getattr(args, name, 1) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return json_main(f"fuzz.py {args.command}", args, args.run)


if __name__ == "__main__":
    sys.exit(main())
