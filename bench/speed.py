"""Training throughput per member and prediction latency of a decision bundle on this CPU (prints one JSON object).

    python bench/speed.py                                              # the default bundle, test-split images
    python bench/speed.py --bundle runs/bench-bundle --repeats 10 --threads 2
    python bench/speed.py --bundle runs/bench-bundle --synthetic       # synthetic lesions instead of test images
    python bench/speed.py --bundle runs/bench-bundle --repeats 2 --batches 1 4 --train-steps 2 --train-warmup 1   # smoke run

Training (per member): images/s as recorded at training time when the checkpoint records it
(``checkpoint.json`` ``training.train_images_per_s``); otherwise measured here: ``--train-steps``
timed AdamW steps after ``--train-warmup`` untimed ones, at the member's input size, batch size,
loss and augmentation level, on pre-decoded images (``source`` says which). The measured figure
includes the augmentation, done serially in this process (``images_per_s``), and is also given
for forward + backward + step alone (``images_per_s_compute_only``); training with DataLoader
workers lies between the two. ``from_wall_time`` is what ``checkpoint.json`` implies: images of
the completed epochs over the run's wall time, which includes decoding, validation after every
epoch and the final validation pass (a lower bound).

Prediction, per ``--batches`` size (latency per image: median and p90; images/s):
(a) ``probabilities+decision``: ``Predictor(bundle, mc_samples=0).predict`` - every member's
preprocessing, all TTA views, temperature, weights, thresholds, JSON-ready records;
(b) ``full_record``: ``Predictor(bundle).predict`` - (a) plus the uncertainty and the review flag
(with the MC-dropout passes the flag was fitted with, or none for a flag scored on the members x
views of (a));
(c) ``explain`` at batch 1: ``Predictor.explain`` given the record of (b) (the members' default
attention map, e.g. Layer-CAM at ``blocks.4`` for EfficientNet-Lite; lesion
segmentation, ABCDE, TDS; what ``predict --report`` adds per image) and from scratch (what the
``serve`` explain route does: (b) then (c)).
Modes are interleaved repeat by repeat, so a busy CPU slows them alike; the load average before
and after is reported. Images: test-split images of the bundle's manifest (``--synthetic``:
synthetic dermoscopy-like lesions, 450x600 by default: HAM10000's original size, ``--image-size``).
Logs go to stderr.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/speed.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main
from bench.onnx_speed import cpu_info, load_images, stats
from bench.quality import resolve_bundle_path
from skinlesion._params import parse_hw

log = logging.getLogger("bench.speed")
RECORDED_FIELD = "train_images_per_s"  # checkpoint.json training.<field>, when training records it


# -- images ----------------------------------------------------------------------------------------
def synthetic_lesions(n: int, classes: Sequence[str], seed: int, size: tuple[int, int] = (450, 600)) -> list[np.ndarray]:
    """``n`` synthetic dermoscopy-like lesions (:mod:`skinlesion.data.synthetic`), classes in turn."""
    from skinlesion.data.synthetic import SYNTHETIC_CLASSES, generate_lesion

    usable = [c for c in classes if c in SYNTHETIC_CLASSES] or list(SYNTHETIC_CLASSES)
    return [generate_lesion(usable[i % len(usable)], seed + i, size=size)[0] for i in range(n)]


def bench_images(bundle: Any, n: int, args: argparse.Namespace) -> tuple[list[np.ndarray], str]:
    """``n`` RGB uint8 images: test-split images (``onnx_speed.load_images``) or synthetic lesions."""
    if args.synthetic:
        h, w = parse_hw(args.image_size, "--image-size", minimum=32)
        return synthetic_lesions(n, bundle.classes, args.seed, (h, w)), f"synthetic lesions {h}x{w} (skinlesion.data.synthetic)"
    return load_images(bundle, n, False, args.data_root, args.seed)


# -- training throughput ---------------------------------------------------------------------------
def recorded_speed(meta: dict[str, Any]) -> dict[str, Any] | None:
    value = (meta.get("training") or {}).get(RECORDED_FIELD)
    return {"images_per_s": value, "field": f"checkpoint.json training.{RECORDED_FIELD}"} if value else None


def wall_time_speed(meta: dict[str, Any]) -> dict[str, Any] | None:
    """Images of the completed epochs / wall time of the run, from checkpoint.json (a lower bound)."""
    tr, train_cfg = meta.get("training") or {}, (meta.get("config") or {}).get("train") or {}
    n_train, bs = (meta.get("data") or {}).get("n_train"), train_cfg.get("batch_size")
    epochs, wall = tr.get("epochs_completed"), tr.get("wall_time_s")
    if not (n_train and bs and epochs and wall):
        return None
    batches = n_train // bs  # drop_last=True
    limit = train_cfg.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit) if limit <= 1 else min(batches, int(limit))
    images = epochs * batches * bs * int(tr.get("devices") or 1)
    return {
        "images_per_s": round(images / wall, 2),
        "images": images,
        "epochs_completed": epochs,
        "wall_time_s": wall,
        "devices": tr.get("devices"),
        "threads": (meta.get("config") or {}).get("trainer", {}).get("threads"),
        "note": "wall time includes decoding, validation after every epoch and the final validation pass; "
                "a partial last epoch is not counted",
    }


def measure_training(member: Any, images: list[np.ndarray], steps: int, warmup: int, seed: int) -> dict[str, Any]:
    """Timed training steps of a copy of ``member`` at its input size, batch size, loss and augmentation."""
    import torch

    from skinlesion.data.transforms import images_to_batch, train_transform
    from skinlesion.models.fusion import MetadataFusionNet
    from skinlesion.train.losses import build_loss

    cfg = member.meta.get("config") or {}
    tc = cfg.get("train") or {}
    bs = int(tc.get("batch_size", 32))
    level = (cfg.get("augment") or {}).get("level", "medium")
    pre = member.preprocessing
    tf = train_transform(tuple(pre["input_size"]), pre["mean"], pre["std"], level, pre.get("interpolation", "bilinear"))
    k = len(member.meta["classes"])
    loss_fn = build_loss(
        tc.get("loss", "weighted_ce"), np.arange(k), k, power=float(tc.get("class_weight_power", 1.0)),
        gamma=float(tc.get("focal_gamma", 2.0)), label_smoothing=float(tc.get("label_smoothing", 0.0)),
    )
    model = copy.deepcopy(member.model).cpu().train()
    fusion = isinstance(model, MetadataFusionNet)
    opt = torch.optim.AdamW(model.parameters(), lr=float(tc.get("lr", 1e-3)), weight_decay=float(tc.get("weight_decay", 0.0)))
    rng = np.random.default_rng(seed)
    aug_s, step_s = [], []
    for i in range(warmup + steps):
        batch = [images[(i * bs + j) % len(images)] for j in range(bs)]
        t0 = time.perf_counter()
        x = images_to_batch(batch, tf)
        t1 = time.perf_counter()
        y = torch.from_numpy(rng.integers(0, k, bs))
        logits = model(x, model.encode_metadata(None, bs)) if fusion else model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if i >= warmup:
            aug_s.append(t1 - t0)
            step_s.append(t2 - t1)
    aug, step = np.asarray(aug_s), np.asarray(step_s)
    total = aug + step
    return {
        "images_per_s": round(bs * len(total) / total.sum(), 2),
        "images_per_s_compute_only": round(bs * len(step) / step.sum(), 2),
        "batch_size": bs,
        "augment_level": level,
        "loss": tc.get("loss", "weighted_ce"),
        "steps": steps,
        "warmup_steps": warmup,
        "step_ms": {"median": round(1e3 * float(np.median(total)), 1), "p90": round(1e3 * float(np.percentile(total, 90)), 1)},
        "augment_ms_per_batch": round(1e3 * float(np.median(aug)), 1),
        "includes": "augmentation of pre-decoded images (serial, this process), forward, backward, AdamW step; "
                    "no decoding, no DataLoader workers, no validation",
    }


def training_rows(bundle: Any, images: list[np.ndarray], args: argparse.Namespace) -> list[dict[str, Any]]:
    from skinlesion.models.fusion import MetadataFusionNet

    rows = []
    for m in bundle.members:
        tc = (m.meta.get("config") or {}).get("train") or {}
        recorded = recorded_speed(m.meta)
        measure = args.train_measure == "always" or (args.train_measure == "auto" and recorded is None)
        measured = None
        if measure and args.train_steps > 0:
            log.info("training speed: %s (%d + %d steps)", m.name, args.train_warmup, args.train_steps)
            measured = measure_training(m, images, args.train_steps, args.train_warmup, args.seed)
        best = recorded or measured
        rows.append({
            "member": m.name,
            "backbone": m.backbone,
            "input_size": list(m.input_size),
            "batch_size": tc.get("batch_size"),
            "metadata": list(m.model.metadata_features) if isinstance(m.model, MetadataFusionNet) else None,
            "train_images_per_s": best["images_per_s"] if best else None,
            "source": "recorded" if recorded else ("measured" if measured else None),
            "recorded": recorded,
            "measured": measured,
            "from_wall_time": wall_time_speed(m.meta),
        })
    return rows


# -- prediction latency ----------------------------------------------------------------------------
def _timed(fn: Any, *a: Any, **kw: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t0, out


def prediction_rows(
    bundle: Any, images: list[np.ndarray], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]:
    """Latency of (a) and (b) per batch size, interleaved; (c) explain at batch 1; what (b) ran with."""
    from skinlesion.delivery.engine import Predictor

    modes = {"probabilities+decision": Predictor(bundle, mc_samples=0), "full_record": Predictor(bundle)}
    n = len(images)
    rows = []
    record = None
    for b in args.batches:
        log.info("predict latency: batch %d", b)
        times: dict[str, list[float]] = {name: [] for name in modes}
        for r in range(args.warmup + args.repeats):
            batch = [images[(r * b + i) % n] for i in range(b)]
            for name, p in modes.items():
                dt, recs = _timed(p.predict, batch)
                if r >= args.warmup:
                    times[name].append(dt)
                if name == "full_record":
                    record = recs[0]
        rows.append({"batch": b, **{name: stats(t, b) for name, t in times.items()}})

    explain = None
    if args.explain:
        log.info("explain latency: batch 1")
        p = modes["full_record"]
        given, scratch = [], []
        for r in range(args.warmup + args.repeats):
            image = images[r % n]
            dt_scratch, (result, _) = _timed(p.explain, image)
            dt_given, _ = _timed(p.explain, image, record=result)  # a result holds the record's keys
            if r >= args.warmup:
                given.append(dt_given)
                scratch.append(dt_scratch)
        explain = {
            "batch": 1,
            "given_record": stats(given, 1),
            "from_scratch": stats(scratch, 1),
            "method": "the members' default attention map (models.registry CAM_DEFAULTS; identity view), lesion "
                      "segmentation, ABCDE, TDS; no TCAV concepts",
        }
    info = {
        "metadata_members": [m.name for m in bundle.members if getattr(m.model, "metadata_encoder", None) is not None],
        "metadata_given": False,  # Predictor.predict(images): fusion members see the metadata as missing
        "engine": modes["probabilities+decision"].engine_choice,  # the default engine (auto)
        "mc_samples": modes["full_record"].mc_samples,
        "review_flag": bundle.spec.review is not None,
        "full_record_has_review_flag": bool(record and ((record.get("uncertainty") or {}).get("review") or {}).get("flag") is not None),
    }
    return rows, explain, info


# -- the bench -------------------------------------------------------------------------------------
def threads_info() -> dict[str, Any]:
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "torch_intra_op": torch.get_num_threads(),
        "torch_inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpus_usable": affinity,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.metrics.classification import to_jsonable

    t_start = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    bundle = load_bundle(resolve_bundle_path(args.bundle))
    n = max(max(args.batches), 8)
    images, source = bench_images(bundle, n, args)
    log.info("%d images: %s", len(images), source)
    t0 = time.perf_counter()
    training = training_rows(bundle, images, args)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    predict, explain, info = prediction_rows(bundle, images, args)
    t_predict = time.perf_counter() - t0
    result = {
        "bench": "speed",
        "bundle": {
            "path": str(bundle.path),
            "id": bundle.bundle_id,
            "name": bundle.spec.name,
            "members": [{"name": m.name, "backbone": m.backbone, "input_size": list(m.input_size)} for m in bundle.members],
            "tta_views": list(bundle.tta.views),
            "decision_rule": bundle.spec.decision.rule,
            **info,
        },
        "images": source,
        "image_shape": list(images[0].shape),
        "training": training,
        "predict": predict,
        "explain": explain,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": "cpu",
        "threads": threads_info(),
        "cpu": cpu_info(),
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "seconds": {"training": round(t_train, 1), "predict": round(t_predict, 1), "total": round(time.perf_counter() - t_start, 1)},
        "note": "per_image_ms = call time / batch size; images_per_s = batch / median call time",
    }
    return to_jsonable(result)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="Bundle folder; 'default' or omitted: the bundle shipped in the package.")
    ap.add_argument("--repeats", type=int, default=10, help="Timed calls per mode and batch size.")
    ap.add_argument("--warmup", type=int, default=1, help="Untimed calls before timing.")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="Batch sizes to time (images per call).")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
    ap.add_argument("--synthetic", action="store_true", help="Synthetic lesions instead of test-split images.")
    ap.add_argument("--image-size", default="450x600", help="HxW of --synthetic images (default: HAM10000's original size).")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-measure", choices=("auto", "always", "never"), default="auto",
                    help="Measure training speed: when not recorded (auto), always, or never.")
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--train-warmup", type=int, default=2)
    ap.add_argument("--no-explain", dest="explain", action="store_false", help="Skip the explain timing.")
    args = ap.parse_args(argv)
    for name in ("repeats", "train_steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.train_warmup < 0:
        ap.error("--warmup and --train-warmup must be >= 0")
    if min(args.batches) < 1:
        ap.error(f"--batches must be >= 1, got {args.batches}")
    try:
        parse_hw(args.image_size, "--image-size", minimum=32)
    except ValueError as e:
        ap.error(f"{e} (e.g. 450x600)")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("speed.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
