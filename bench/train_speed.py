"""Training throughput on this machine (prints JSON lines).

Two modes:

    python bench/train_speed.py --backbone tf_efficientnet_lite0 --sizes 96x128 120x160 144x192
        synthetic tensors (no data loading), batch 32, AdamW steps: the backbone alone.

    python bench/train_speed.py --pipeline --root ../shared/data/ham10000 --rounds 3
        one training step on real HAM10000 images, profiled by phase (data: decode + augment +
        collate, or gather + batch augment; forward; backward; optimizer), for each pipeline:

        per_image   JPEG decode + albumentations per image in one DataLoader worker, fp32 NCHW
                    (what training used before ``data.cache``)
        cached      images decoded once into memory (uint8), whole batches augmented as tensors
                    (``data.cache: true``), NCHW
        cached_cl   cached + channels_last (``trainer.channels_last: true``)
        cached_cl_malloc  cached_cl + glibc keeps freed buffers (``trainer.keep_freed_memory``)
        cached_cl_bf16    cached_cl + bf16 autocast
        cached_cl_malloc_frozen_stem  + stem and first two stages frozen (no gradients through them)
        cached_cl_malloc_small        + 96x128 inputs (what progressive resizing runs in its early epochs)

        Each pipeline runs in its own process (mallopt cannot be undone), in turn, ``--rounds``
        times; the figure is the median over rounds of images/s over ``--steps`` steps. The model
        is the recipe's: Lite0 with the age/sex/site fusion branch, ImageNet-initialised.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from skinlesion._params import parse_hw
from skinlesion.models.factory import create_backbone

PIPELINES = (
    "per_image", "cached", "cached_cl", "cached_cl_malloc", "cached_cl_bf16", "cached_cl_malloc_frozen_stem",
    "cached_cl_malloc_small",
)
SMALL = (96, 128)  # the early-epoch size of progressive resizing


def measure(backbone: str, hw: tuple[int, int], batch: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = create_backbone(backbone, num_classes=7, pretrained="none")
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, *hw)
    y = torch.randint(0, 7, (batch,))
    model.train()
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        if i == 1:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        infer = batch * steps / (time.perf_counter() - t0)
    return {"backbone": backbone, "input_hw": list(hw), "batch": batch, "threads": threads,
            "train_images_per_s": round(train, 1), "inference_images_per_s": round(infer, 1)}


def profile_pipeline(args: argparse.Namespace) -> dict:
    """One pipeline, this process: seconds per phase over ``args.steps`` steps after 2 warm-up steps."""
    from torch.utils.data import DataLoader

    from skinlesion._malloc import keep_freed_memory
    from skinlesion.data.batch_augment import augment_batch
    from skinlesion.data.readers import load_dataset
    from skinlesion.data.image_cache import CachedLesionDataset, cache_size, decode_images
    from skinlesion.data.loader import LesionDataset
    from skinlesion.data.metadata import MetadataEncoder
    from skinlesion.data.transforms import train_transform
    from skinlesion.models.fusion import create_fusion_model
    from skinlesion.models.registry import data_config
    from skinlesion.train.sampling import stratified_subsample

    name = args.pipeline_one
    backbone = args.one_backbone or args.backbone[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if name.endswith("_malloc"):
        keep_freed_memory()
    table = load_dataset("ham10000", args.root)
    keep = stratified_subsample(table.labels(), args.batch * (args.steps + 2), seed=0)
    table = table.subset(table.frame["image_id"].to_numpy()[keep])
    hw = SMALL if name.endswith("_small") else parse_hw(args.size, "--size")
    dc = data_config(backbone, hw)
    mean, std = list(dc["mean"]), list(dc["std"])
    encoder = MetadataEncoder(["age", "sex", "site"]).fit(table)
    meta = encoder.encode_frame(table.frame)
    model = create_fusion_model(backbone, encoder, num_classes=7, pretrained=args.pretrained, drop_rate=0.3)
    if name.endswith("_frozen_stem"):  # timm EfficientNet: conv_stem, bn1, blocks[0..1]
        bb = model.backbone
        for mod in (bb.conv_stem, bb.bn1, bb.blocks[0], bb.blocks[1]):
            mod.requires_grad_(False)
    channels_last = "_cl" in name
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    model.train()
    t_decode = 0.0
    if name == "per_image":
        tf = train_transform(hw, mean, std, "medium", dc["interpolation"])
        loader = DataLoader(LesionDataset(table, tf, metadata=meta), batch_size=args.batch, shuffle=True,
                            num_workers=1, drop_last=True, persistent_workers=True)
    else:
        t0 = time.perf_counter()
        images = decode_images(table, cache_size(hw), threads=args.threads)
        t_decode = time.perf_counter() - t0
        loader = DataLoader(CachedLesionDataset(table, images, metadata=meta), batch_size=args.batch, shuffle=True,
                            num_workers=0, drop_last=True)
    phases = {"data": 0.0, "augment": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    it = iter(loader)
    n_images = 0
    for step in range(args.steps + 2):
        t = [time.perf_counter()]
        x, y, _, m = next(it)
        t.append(time.perf_counter())
        if x.dtype == torch.uint8:
            x = augment_batch(x, hw, mean, std, "medium")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("_bf16")):
            loss = torch.nn.functional.cross_entropy(model(x, m).float(), y)
        t.append(time.perf_counter())
        opt.zero_grad()
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if step >= 2:
            n_images += len(y)
            for k, (a, b) in zip(phases, zip(t, t[1:]), strict=True):
                phases[k] += b - a
    total = sum(phases.values())
    return {
        "pipeline": name, "images_per_s": round(n_images / total, 2), "steps": args.steps, "batch": args.batch,
        "input_hw": list(hw), "seconds_per_step": {k: round(v / args.steps, 4) for k, v in phases.items()},
        "decode_all_s": round(t_decode, 2), "decoded_images": len(table),
    }


def run_pipelines(args: argparse.Namespace) -> None:
    """Every pipeline in its own process, in turn, ``rounds`` times; medians per pipeline."""
    results: dict[str, list[dict]] = {p: [] for p in args.pipelines}
    for r in range(args.rounds):
        for p in args.pipelines:
            cmd = [sys.executable, __file__, "--pipeline-one", p, "--root", args.root, "--size", args.size,
                   "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--one-backbone", args.backbone[0], "--pretrained", args.pretrained]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res = json.loads(out)
            results[p].append(res)
            print(json.dumps({"round": r, **res}), file=sys.stderr, flush=True)
    base = statistics.median(x["images_per_s"] for x in results[args.pipelines[0]])
    for p, runs in results.items():
        med = statistics.median(x["images_per_s"] for x in runs)
        phases = {k: round(statistics.median(x["seconds_per_step"][k] for x in runs), 4) for k in runs[0]["seconds_per_step"]}
        print(json.dumps({
            "pipeline": p, "images_per_s_median": med, "images_per_s_runs": [x["images_per_s"] for x in runs],
            f"speedup_vs_{args.pipelines[0]}": round(med / base, 2), "seconds_per_step_median": phases,
            "input_hw": runs[0]["input_hw"], "batch": args.batch, "threads": args.threads, "steps": args.steps,
            "decode_all_s": runs[0]["decode_all_s"], "decoded_images": runs[0]["decoded_images"],
        }), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="+", default=["tf_efficientnet_lite0"])
    ap.add_argument("--one-backbone", dest="one_backbone", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", default=["96x128", "120x160", "144x192"], help="HxW (synthetic mode)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pipeline", action="store_true", help="profile real-data training pipelines (see above)")
    ap.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    ap.add_argument("--pipeline-one", choices=PIPELINES, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ham10000"))
    ap.add_argument("--size", default="120x160", help="HxW (pipeline mode)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pretrained", default="auto")
    args = ap.parse_args(argv)
    try:
        sizes = [parse_hw(s, "--sizes") for s in args.sizes]
        parse_hw(args.size, "--size")
    except ValueError as e:
        ap.error(str(e))
    if args.pipeline_one:
        print(json.dumps(profile_pipeline(args)), flush=True)
        return 0
    if args.pipeline:
        run_pipelines(args)
        return 0
    for name in args.backbone:
        for h, w in sizes:
            print(json.dumps(measure(name, (h, w), args.batch, args.steps, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
