"""Accuracy of the automated ABCDE measurements and segmentation (prints one JSON object).

    python bench/abcde_accuracy.py --n-synthetic 20 --n-ham 500 --seed 0

Synthetic: ``n`` lesions per class from the generator, each rendered clean (default noise) and
with artefacts (hair + vignette + ruler, same lesion); measured with the automatic segmentation
against the generator's ground truth (diameter, colour set, asymmetric axes, asymmetry ranking,
mask IoU), and on the true mask for reference. HAM10000: median IoU of the segmentation's
bounding box with the reference box of ``HAM10000_metadata_ext.csv`` (``top,bottom,left,right``
are half-open pixel indices: ``bottom`` reaches 150 and ``right`` 200 on 150x200 images), plus the
median per-side offset (reference minus ours; positive = the reference box is larger).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import spearmanr

if not __package__:  # run as a file (python bench/abcde_accuracy.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import json_main

from skinlesion.data.synthetic import SYNTHETIC_CLASSES, render_lesion, sample_spec
from skinlesion.explain.abcde import measure_abcde
from skinlesion.explain.segmentation import box_iou, mask_iou, segment_lesion

DEFAULT_HAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000"


def _jaccard(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def _summary(rows: list[dict]) -> dict:
    err = np.abs([r["diameter_rel_error"] for r in rows])
    return {
        "n": len(rows),
        "diameter_abs_rel_error_median": round(float(np.median(err)), 4),
        "diameter_abs_rel_error_p90": round(float(np.quantile(err, 0.9)), 4),
        "diameter_abs_rel_error_max": round(float(err.max()), 4),
        "diameter_within_5pct_rate": round(float(np.mean(err <= 0.05)), 4),
        "colour_set_exact_rate": round(float(np.mean([r["colour_exact"] for r in rows])), 4),
        "colour_jaccard_mean": round(float(np.mean([r["colour_jaccard"] for r in rows])), 4),
        "asymmetric_axes_agreement": round(float(np.mean([r["axes_agree"] for r in rows])), 4),
        "asymmetry_spearman": round(float(spearmanr([r["asymmetry"] for r in rows],
                                                    [r["true_asymmetry"] for r in rows])[0]), 4),  # fmt: skip
        "segmentation_iou_median": round(float(np.median([r["iou"] for r in rows])), 4),
        "segmentation_iou_p10": round(float(np.quantile([r["iou"] for r in rows], 0.1)), 4),
    }


def synthetic(n: int, seed: int) -> dict:
    conditions = {"clean": {}, "artefacts": {"hair": True, "vignette": True, "ruler": True}}
    rows: dict[str, list[dict]] = {"clean": [], "artefacts": [], "true_mask_clean": []}
    for k, label in enumerate(SYNTHETIC_CLASSES):
        for i in range(n):
            spec = sample_spec(label, np.random.default_rng([seed, k, i]))
            for name, artefacts in conditions.items():
                image, mask, truth = render_lesion(spec, np.random.default_rng([seed, k, i, 1]), **artefacts)
                seg = segment_lesion(image)
                if not seg.mask.any():
                    rows[name].append({"diameter_rel_error": -1.0, "colour_exact": False, "colour_jaccard": 0.0,
                                       "axes_agree": False, "asymmetry": 0.0, "true_asymmetry": truth.asymmetry,
                                       "iou": 0.0})  # fmt: skip
                    continue
                targets = [(name, seg.mask)] + ([("true_mask_clean", mask)] if name == "clean" else [])
                for key, m in targets:
                    r = measure_abcde(image, m, truth.pixel_spacing_mm)
                    rows[key].append({
                        "diameter_rel_error": r.diameter_mm / truth.diameter_mm - 1.0,
                        "colour_exact": set(r.colours) == set(truth.colours),
                        "colour_jaccard": _jaccard(r.colours, truth.colours),
                        "axes_agree": r.asymmetric_axes == truth.asymmetric_axes,
                        "asymmetry": r.asymmetry,
                        "true_asymmetry": truth.asymmetry,
                        "iou": mask_iou(m, mask),
                    })  # fmt: skip
    return {name: _summary(r) for name, r in rows.items()}


def ham(root: Path, n: int, seed: int) -> dict:
    table = root / "HAM10000_metadata_ext.csv"
    if not table.is_file():
        return {"path": str(root), "error": f"{table} not found"}
    meta = pd.read_csv(table)
    meta = meta.sample(min(n, len(meta)), random_state=seed)
    ious, offsets, flags = [], [], {}
    for row in meta.itertuples():
        image = np.asarray(Image.open(root / "images" / f"{row.image_id}.jpg").convert("RGB"))
        seg = segment_lesion(image)
        ref = (row.top, row.bottom, row.left, row.right)
        ious.append(box_iou(seg.bbox, ref))
        flags[seg.quality] = flags.get(seg.quality, 0) + 1
        if seg.mask.any():
            t, b, left, right = seg.bbox
            offsets.append((t - row.top, row.bottom - b, left - row.left, row.right - right))
    off = np.median(np.array(offsets), axis=0) if offsets else [float("nan")] * 4
    return {
        "path": str(root),
        "n": len(ious),
        "box_convention": "top,bottom,left,right half-open (bottom/right exclusive)",
        "bbox_iou_median": round(float(np.median(ious)), 4),
        "bbox_iou_mean": round(float(np.mean(ious)), 4),
        "bbox_iou_p25": round(float(np.quantile(ious, 0.25)), 4),
        "reference_minus_ours_px_median": dict(zip(("top", "bottom", "left", "right"), map(float, off))),
        "quality_flags": flags,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-synthetic", type=int, default=20, help="lesions per class")
    ap.add_argument("--n-ham", type=int, default=500, help="HAM10000 images (0 to skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ham-root", type=Path, default=DEFAULT_HAM)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    out: dict = {"seed": args.seed, "n_synthetic_per_class": args.n_synthetic, "image_size": [150, 200]}
    out["synthetic"] = synthetic(args.n_synthetic, args.seed) if args.n_synthetic > 0 else None
    out["ham10000"] = ham(args.ham_root, args.n_ham, args.seed) if args.n_ham > 0 else None
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("abcde_accuracy.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
