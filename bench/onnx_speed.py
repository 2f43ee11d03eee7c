"""Eager PyTorch vs ONNX Runtime (fp32, int8) for a whole bundle on this CPU, in one run (prints one JSON object).

    python bench/onnx_speed.py --bundle runs/bench-bundle --batches 1 32 --repeats 20 --threads 2

Every engine does what ``predict`` does: each member's preprocessing (resize + normalise) of RGB
uint8 images, every TTA view of the bundle (D4 for the bench bundle), then the bundle's
post-processing (temperature, weights, thresholds). Timings are per call after warm-up, engines
interleaved repeat by repeat so a busy CPU slows them alike; ``per_image_ms`` is the call time
divided by the batch size. Images are real test-split images (``--synthetic``: random ones).
``--metadata``: every engine also gets each image's age, sex and site (the test split's records;
with ``--synthetic``, records drawn from the fusion members' encoders), and images are decided by
the operating point the Predictor would use (``Bundle.metadata_given``).
The ONNX files are exported into ``<bundle>/onnx`` (fp32 + int8, calibrated on validation) when
missing, stale, or (with ``--metadata``) image-only for fusion members, and the export time is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a file (python bench/onnx_speed.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

from skinlesion.delivery.engine import TorchEngine
from skinlesion.delivery.onnx_runtime import OnnxEngine, OnnxError, read_manifest
from skinlesion.ensemble.bundle import Bundle, load_bundle


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    lines = dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln)
    flags = set(lines.get("flags\t\t", lines.get("flags", "")).split())
    info["model"] = next((v.strip() for k, v in lines.items() if k.strip() == "model name"), None)
    info["vnni"] = sorted(f for f in flags if "vnni" in f)
    info["avx512f"] = "avx512f" in flags
    return info


def load_images(bundle: Bundle, n: int, synthetic: bool, data_root: str | None, seed: int) -> tuple[list[np.ndarray], str]:
    rng = np.random.default_rng(seed)
    if synthetic:
        return [rng.integers(0, 256, size=(450, 600, 3), dtype=np.uint8) for _ in range(n)], "random uint8 450x600"
    from skinlesion.evaluation import load_bundle_split

    table = load_bundle_split(bundle, "test", data_root)
    idx = np.sort(rng.choice(len(table), size=min(n, len(table)), replace=False))
    images = [table.load_image(int(i)) for i in idx]
    while len(images) < n:  # a tiny split: repeat
        images.append(images[len(images) % len(idx)])
    return images, f"test split ({table.source}), {len(idx)} distinct images"


def load_records(bundle: Bundle, n: int, synthetic: bool, data_root: str | None, seed: int) -> tuple[list[dict], str]:
    """Metadata records of the images :func:`load_images` returns (same seed, same rows)."""
    if synthetic:
        from skinlesion.delivery.onnx_export import synthetic_records

        return synthetic_records(n, bundle.members, seed), "drawn from the fusion members' encoders"
    from skinlesion.evaluation import load_bundle_split

    rng = np.random.default_rng(seed)
    table = load_bundle_split(bundle, "test", data_root)
    idx = np.sort(rng.choice(len(table), size=min(n, len(table)), replace=False))
    columns = [c for c in ("age", "sex", "site") if c in table.frame.columns]
    rows = table.frame.iloc[idx][columns].astype(object).to_dict("records")
    records = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()} for r in rows]
    while len(records) < n:
        records.append(records[len(records) % len(idx)])
    return records, f"test split records ({', '.join(columns)})"


def onnx_engines(
    bundle: Bundle, onnx_dir: Path, threads: int, data_root: str | None, metadata: bool = False
) -> tuple[dict, dict]:
    export = {"exported_now": False}
    try:
        engines = {p: OnnxEngine(bundle, onnx_dir, precision=p, threads=threads) for p in ("fp32", "int8")}
        if metadata and not engines["fp32"].accepts_metadata:
            raise OnnxError(f"image-only graphs for fusion members {engines['fp32'].image_only_fusion_members()}")
    except OnnxError as e:
        from skinlesion.delivery.onnx_export import export_bundle_onnx

        t0 = time.perf_counter()
        export_bundle_onnx(bundle, onnx_dir, int8=True, data_root=data_root)
        export = {"exported_now": True, "reason": str(e), "seconds": round(time.perf_counter() - t0, 1)}
        engines = {p: OnnxEngine(bundle, onnx_dir, precision=p, threads=threads) for p in ("fp32", "int8")}
    m = read_manifest(onnx_dir)
    export["calibration"] = {k: v for k, v in (m["quantisation"]["calibration_source"] or {}).items() if k != "image_ids"}
    export["parity_at_export"] = {e["name"]: {p: r["max_abs_prob_diff"] for p, r in e["parity"].items()} for e in m["members"]}
    return engines, export


def stats(seconds: list[float], batch: int) -> dict:
    s = np.asarray(seconds)
    med, p90 = float(np.median(s)), float(np.percentile(s, 90))
    return {
        "images_per_s": round(batch / med, 2),
        "call_ms": {"median": round(1e3 * med, 2), "p90": round(1e3 * p90, 2)},
        "per_image_ms": {"median": round(1e3 * med / batch, 2), "p90": round(1e3 * p90 / batch, 2)},
        "repeats": len(seconds),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/bench-bundle")
    ap.add_argument("--onnx-dir", default=None, help="Default: BUNDLE/onnx (exported there when missing or stale).")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads.")
    ap.add_argument("--synthetic", action="store_true", help="Random images instead of the test split.")
    ap.add_argument("--metadata", action="store_true", help="Give every engine the images' age, sex and site.")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    bundle = load_bundle(args.bundle)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else Path(args.bundle) / "onnx"
    onnx, export = onnx_engines(bundle, onnx_dir, args.threads, args.data_root, args.metadata)
    engines = {"torch_eager": TorchEngine(bundle, "cpu"), "ort_fp32": onnx["fp32"], "ort_int8": onnx["int8"]}
    images, source = load_images(bundle, max(args.batches), args.synthetic, args.data_root, args.seed)
    records, records_source = (
        load_records(bundle, max(args.batches), args.synthetic, args.data_root, args.seed) if args.metadata else (None, None)
    )

    def predict(engine, batch: list[np.ndarray], meta: list[dict] | None) -> np.ndarray:  # noqa: ANN001 - an engine
        logits = engine.view_logits(batch) if meta is None else engine.view_logits(batch, metadata=meta)
        return bundle.predict_from_logits(logits, metadata_given=bundle.metadata_given(meta, len(batch))).probs

    results = []
    for b in args.batches:
        batch = images[:b]
        meta = None if records is None else records[:b]
        probs = {}
        for name, eng in engines.items():
            for _ in range(args.warmup):
                probs[name] = predict(eng, batch, meta)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, eng in engines.items():
                t0 = time.perf_counter()
                predict(eng, batch, meta)
                times[name].append(time.perf_counter() - t0)
        row = {"batch": b, **{name: stats(t, b) for name, t in times.items()}}
        eager = row["torch_eager"]["images_per_s"]
        row["speedup_vs_eager"] = {n: round(row[n]["images_per_s"] / eager, 3) for n in ("ort_fp32", "ort_int8")}
        row["max_abs_prob_diff_vs_eager"] = {n: float(np.abs(probs[n] - probs["torch_eager"]).max()) for n in ("ort_fp32", "ort_int8")}
        results.append(row)

    import onnxruntime

    return {
        "bench": "onnx_speed",
        "bundle": str(bundle.path),
        "bundle_id": bundle.bundle_id,
        "members": [{"name": m.name, "input_size": list(m.input_size)} for m in bundle.members],
        "tta_views": list(bundle.tta.views),
        "images": source,
        "metadata": records_source,
        "metadata_given": None if records is None else int(bundle.metadata_given(records, len(records)).sum()),
        "threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": args.threads},
        "providers": onnx["fp32"].providers,
        "warmup": args.warmup,
        "onnx": export,
        "results": results,
        "cpu": cpu_info(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "note": "per call: every member's preprocessing, all TTA views, the bundle's post-processing",
    }


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("onnx_speed.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
