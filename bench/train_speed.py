"""Training and inference throughput of registry backbones on this machine (prints JSON lines).

    python bench/train_speed.py --backbone tf_efficientnet_lite0 --sizes 96x128 120x160 144x192

Synthetic tensors (no data loading), batch 32, AdamW steps; the numbers behind the CPU preset.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from skinlesion.models.registry import create_backbone


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", nargs="+", default=["tf_efficientnet_lite0"])
    ap.add_argument("--sizes", nargs="+", default=["96x128", "120x160", "144x192"], help="HxW")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for name in args.backbone:
        for s in args.sizes:
            h, w = (int(v) for v in s.lower().split("x"))
            print(json.dumps(measure(name, (h, w), args.batch, args.steps, args.threads)), flush=True)


if __name__ == "__main__":
    main()
