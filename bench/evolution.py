"""Follow-up comparison: false alarms on unchanged lesions, detection of known changes, registration (one JSON object).

    python bench/evolution.py                                   # all HAM10000 pairs, 30 synthetic pairs per cell
    python bench/evolution.py --reuse                           # second run: cached per-pair statistics
    python bench/evolution.py --max-ham-pairs 40 --n-synthetic 4   # smoke run

What :func:`skinlesion.explain.evolution.compare_lesions` (the path of ``skinlesion compare``,
``POST /compare`` and the web page) does on:

* **HAM10000 pairs** (``../shared/data/ham10000``): for every lesion with several images, its first
  two images (by image id): the same lesion photographed at one visit, with different framing,
  magnification and lighting but no real change. The lesions are split in two halves (seeded): on
  the *calibration* half each criterion's threshold is the ``1 - target/3`` quantile of its statistic
  (``fitted_rule``); the *evaluation* half gives the false-alarm rate of the shipped rule
  (``CHANGE_RULE``) with a 95% Wilson interval, as deployed (the data carry no pixel spacing, so the
  growth criterion is not assessed) and with the magnification equalised by the registration's
  scale (a stand-in for known spacings: the growth criterion then measures segmentation noise).
* **Synthetic follow-up pairs** (``skinlesion.data.synthetic.render_followup``): a lesion of each
  class in turn, then the same lesion after a known change (``growth``: area +x; ``new_colour``: a
  colour it lacked painted over x of it; ``asymmetry``: order-1 and -3 boundary harmonics of
  amplitude x; ``none``), photographed with a different camera pose (any rotation, up to 10 px
  shift, zoom x0.82-1.22 with the spacings known), hair and vignetting each with probability 0.3
  and brightness 0.85-1.15. Reported per kind and amount: the rate called "significant change"
  (95% Wilson interval), the mean true change (measured on the generator's masks), and per kind
  the smallest amount detected at least 90% of the time.
* **Registration**: synthetic pairs have the exact transform: mean displacement error over the
  lesion (TRE, px) and rotation error; HAM10000 pairs: NCC before and after registration and the
  Dice overlap of the two segmentations once registered.

Per-pair statistics are cached as JSON lines in ``--cache-dir`` (default ``runs/bench-evolution``);
``--reuse`` reads them back and only computes what is missing. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/evolution.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

log = logging.getLogger("bench.evolution")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_HAM = REPO.parent / "shared" / "data" / "ham10000"
AMOUNTS: dict[str, tuple[float, ...]] = {
    "growth": (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0),
    "new_colour": (0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.4, 0.5),
    "asymmetry": (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.2, 0.3, 0.4),
}
#: HAM10000 pairs whose apparent magnification ratio is at most this stand for follow-up images
#: taken with known, equal pixel spacings (the growth criterion's noise).
SAME_MAGNIFICATION = 1.1
MAX_SHIFT_PX = 10.0
MAX_LOG_ZOOM = 0.2
DETECTED = 0.9


def wilson(k: int, n: int) -> dict[str, Any]:
    """Rate k/n with its two-sided 95% Wilson interval."""
    from skinlesion.calibration.thresholds import lower_bound

    if n == 0:
        return {"rate": None, "k": 0, "n": 0, "ci95": [None, None]}
    lo = float(lower_bound(np.array(k), np.array(n), 0.975, "wilson"))
    hi = 1.0 - float(lower_bound(np.array(n - k), np.array(n), 0.975, "wilson"))
    return {"rate": round(k / n, 4), "k": int(k), "n": int(n), "ci95": [round(lo, 4), round(hi, 4)]}


def _stats(comparison: Any) -> dict[str, Any]:
    """What a pair's row keeps: registration, segmentation qualities and both ABCDE results (the
    rule's statistics are computed from them at summary time, by the library)."""
    r = comparison.result
    return {
        "registration": {k: r["registration"][k] for k in ("rotation_deg", "scale", "ncc", "ncc_unregistered", "overlap", "mask_dice")},
        "segmentation": {k: v["quality"] for k, v in r["segmentation"].items()},
        "matrix": np.asarray(comparison.registration.matrix).tolist(),
        "abcde": r["abcde"],
    }


def _abcde(d: dict[str, Any]) -> Any:
    from skinlesion.explain.abcde import ABCDEResult

    return ABCDEResult(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def statistics(row: dict[str, Any]) -> dict[str, float | None] | None:
    """The rule's statistics of a pair (:func:`skinlesion.explain.evolution.change_statistics`); None
    when a lesion was not found."""
    from skinlesion.explain.evolution import change_statistics

    if "stats" not in row:
        a = row["abcde"]
        if a["before"] is None or a["after"] is None:
            row["stats"] = None
        else:
            before, after = _abcde(a["before"]), _abcde(a["after"])
            row["stats"] = change_statistics(before, after, sizes_comparable=before.spacing_known and after.spacing_known)
    return row["stats"]


class _Cache:
    """Per-pair results as JSON lines, keyed by pair id."""

    def __init__(self, path: Path, reuse: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        if reuse and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["id"]] = row
        elif path.exists():
            path.unlink()

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, row: dict) -> None:
        self.rows[row["id"]] = row
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


# -- HAM10000 -----------------------------------------------------------------------------------------------------
def ham_pairs(root: Path, max_pairs: int | None, seed: int) -> list[dict[str, Any]]:
    """One pair per lesion with several images (its first two image ids), each with its half."""
    import pandas as pd

    meta_file = root / "HAM10000_metadata.csv"
    if not meta_file.is_file():
        raise BenchError(f"HAM10000 metadata not found: {meta_file} (give --ham-root)")
    meta = pd.read_csv(meta_file)
    groups = meta.sort_values("image_id").groupby("lesion_id")
    pairs = [
        {"lesion_id": lesion, "images": list(g["image_id"][:2]), "dx": str(g["dx"].iloc[0]), "dx_type": str(g["dx_type"].iloc[0])}
        for lesion, g in groups if len(g) >= 2
    ]  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(pairs))
    for rank, i in enumerate(order):
        pairs[i]["half"] = "calibration" if rank % 2 == 0 else "evaluation"
    if max_pairs is not None:
        pairs = [pairs[i] for i in order[:max_pairs]]
    return pairs


def run_ham(root: Path, pairs: list[dict[str, Any]], cache: _Cache) -> list[dict[str, Any]]:
    from skinlesion.data.table import read_rgb
    from skinlesion.explain.evolution import compare_lesions

    rows, started = [], time.perf_counter()
    for i, pair in enumerate(pairs):
        key = "ham:" + ":".join(pair["images"])
        row = cache.get(key)
        if row is None:
            a, b = (read_rgb(str(root / "images" / f"{im}.jpg")) for im in pair["images"])
            row = {"id": key, **pair, **_stats(compare_lesions(a, b))}
            cache.put(row)
        rows.append(row)
        if (i + 1) % 50 == 0:
            log.info("HAM10000 pairs: %d / %d (%.0f s)", i + 1, len(pairs), time.perf_counter() - started)
    return rows


def _equalised_growth(row: dict[str, Any]) -> float | None:
    """Relative area change once the registration's scale puts both images at one magnification."""
    if statistics(row) is None:
        return None
    area_b, area_a = row["abcde"]["before"]["area_px"], row["abcde"]["after"]["area_px"]
    ratio = area_a * row["registration"]["scale"] ** 2 / area_b
    return max(ratio, 1.0 / ratio) - 1.0


def _area_ratio(row: dict[str, Any]) -> float:
    ratio = row["abcde"]["after"]["area_px"] / row["abcde"]["before"]["area_px"]
    return max(ratio, 1.0 / ratio)


def _same_magnification(row: dict[str, Any]) -> bool:
    """The registration finds both images at one magnification (within :data:`SAME_MAGNIFICATION`)."""
    scale = row["registration"]["scale"]
    return max(scale, 1.0 / scale) <= SAME_MAGNIFICATION


def _raw_growth(row: dict[str, Any]) -> float | None:
    """The growth statistic from the pixel areas as given (what the rule sees with equal spacings)."""
    return None if statistics(row) is None else _area_ratio(row) - 1.0


# -- synthetic ---------------------------------------------------------------------------------------------------
def synthetic_cells(n: int, kinds: Sequence[str], amounts: Sequence[float] | None = None) -> list[tuple[str, float, int]]:
    """(kind, amount, index) of every synthetic pair: ``n`` per kind and amount, ``3 n`` unchanged."""
    cells = [("none", 0.0, i) for i in range(n * 3)] if "none" in kinds else []
    for kind in kinds:
        if kind != "none":
            cells += [(kind, amount, i) for amount in (amounts or AMOUNTS[kind]) for i in range(n)]
    return cells


def _true_change(p: Any) -> dict[str, Any]:
    b, a = p.before_truth, p.after_truth
    return {
        "area_ratio": a.area_px / b.area_px,
        "asymmetry_change": a.asymmetry - b.asymmetry,
        "colours_gained": [c for c in a.colours if c not in b.colours],
    }


def _registration_error(p: Any, matrix: np.ndarray) -> dict[str, float]:
    rows, cols = np.nonzero(p.after_mask)
    q = np.stack([cols, rows, np.ones_like(cols)]).astype(np.float64)
    tre = float(np.hypot(*(np.asarray(matrix) @ q - p.matrix @ q)[:2]).mean())
    rot = lambda m: math.degrees(math.atan2(m[1][0], m[0][0]))  # noqa: E731
    return {"tre_px": tre, "rotation_error_deg": abs((rot(matrix) - rot(p.matrix) + 180) % 360 - 180)}


def run_synthetic(cells: list[tuple[str, float, int]], seed: int, cache: _Cache) -> list[dict[str, Any]]:
    from skinlesion.data.synthetic import (
        DERMOSCOPIC_COLOURS,
        SYNTHETIC_CLASSES,
        change_spec,
        fits_followup,
        render_followup,
        sample_spec,
    )
    from skinlesion.explain.evolution import compare_lesions

    rows, started = [], time.perf_counter()
    size = (150, 200)
    for j, (kind, amount, i) in enumerate(cells):
        key = f"syn:{seed}:{kind}:{amount}:{i}"
        row = cache.get(key)
        if row is None:
            rng = np.random.default_rng([seed, i, int(1000 * amount), len(kind)])
            label = SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)]
            zoom = float(np.exp(rng.uniform(-MAX_LOG_ZOOM, MAX_LOG_ZOOM)))
            growth = amount if kind == "growth" else 0.0
            drawn = sample_spec(label, rng, size=size)
            while kind == "new_colour" and len(drawn.colours) == len(DERMOSCOPIC_COLOURS):  # a colour must be missing
                drawn = sample_spec(label, rng, size=size)
            spec = fits_followup(drawn, size, growth, zoom, MAX_SHIFT_PX)
            if kind == "asymmetry":  # room for the added lobes
                spec = replace(spec, radius_px=spec.radius_px / (1.0 + 2 * amount))
            after = change_spec(spec, kind, amount, rng)
            p = render_followup(
                spec, after, rng, size=size, rotation_deg=float(rng.uniform(-180, 180)), zoom=zoom,
                shift_px=(float(rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX)), float(rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX))),
                hair=(bool(rng.random() < 0.3), bool(rng.random() < 0.3)), vignette=(bool(rng.random() < 0.3), bool(rng.random() < 0.3)),
                brightness=(float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15))),
            )  # fmt: skip
            c = compare_lesions(p.before, p.after, before_spacing_mm=p.before_spacing_mm, after_spacing_mm=p.after_spacing_mm)
            stats = _stats(c)
            row = {"id": key, "kind": kind, "amount": amount, "label": label, "zoom": zoom, **stats,
                   "truth": _true_change(p), "registration_error": _registration_error(p, np.asarray(stats["matrix"]))}  # fmt: skip
            cache.put(row)
        rows.append(row)
        if (j + 1) % 50 == 0:
            log.info("synthetic pairs: %d / %d (%.0f s)", j + 1, len(cells), time.perf_counter() - started)
    return rows


# -- summaries ---------------------------------------------------------------------------------------------------
def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    named = {"min": 0.0, "p01": 0.01, "p05": 0.05, "median": 0.5, "p90": 0.9, "p95": 0.95, "max": 1.0}
    return {"n": int(v.size), **{k: round(float(np.quantile(v, q)), 4) for k, q in named.items()}}


def _assessable(rows: list[dict[str, Any]], rule: Any) -> list[dict[str, Any]]:
    """Pairs the rule assesses: a lesion found in both images, registered segmentations overlapping."""
    return [r for r in rows if statistics(r) is not None and rule.assessable(_dice(r))]


def _dice(row: dict[str, Any]) -> float:
    """Dice of the registered segmentations (0 when the registration put the after lesion off the image)."""
    return row["registration"]["mask_dice"] or 0.0


def fit_rule(rows: list[dict[str, Any]], rule: Any) -> dict[str, Any]:
    """Thresholds: the ``1 - target/3`` quantile of each statistic on the unchanged pairs the rule assesses."""
    q = 1.0 - rule.target_false_alarm / 3.0
    usable = _assessable(rows, rule)
    same = [r for r in usable if _same_magnification(r)]
    values = {
        "growth": [_raw_growth(r) for r in same],
        "new_colour": [statistics(r)["new_colour"] for r in usable],
        "asymmetry": [statistics(r)["asymmetry"] for r in usable],
    }
    return {
        "quantile": round(q, 5),
        "n_pairs": len(usable),
        "n_pairs_growth": len(same),
        "thresholds": {k: round(float(np.quantile(np.asarray(v, float), q)), 4) if v else None for k, v in values.items()},
        "growth_note": f"growth from the pixel areas of the pairs at one apparent magnification (registration scale within x{SAME_MAGNIFICATION})",
    }


def _call(row: dict[str, Any], rule: Any, growth: float | None = None) -> bool | None:
    """True: significant change; False: no significant change; None: not assessed."""
    stats = statistics(row)
    if stats is None or not rule.assessable(_dice(row)):
        return None
    s = dict(stats)
    if growth is not None:
        s["growth"] = growth
    return any(bool(v) for v in rule.fires(s).values())


def false_alarms(rows: list[dict[str, Any]], rule: Any) -> dict[str, Any]:
    """Unchanged pairs called changed, among all pairs (a pair not assessed is no false alarm)."""
    n = len(rows)
    deployed = [_call(r, rule) for r in rows]
    equalised = [_call(r, rule, _equalised_growth(r)) for r in rows]
    same = [r for r in rows if statistics(r) is not None and _same_magnification(r)]
    with_spacings = [_call(r, rule, _raw_growth(r)) for r in same]
    usable = _assessable(rows, rule)
    per_criterion = {name: wilson(sum(bool(rule.fires(statistics(r))[name]) for r in usable), n) for name in ("new_colour", "asymmetry")}
    per_criterion["growth_same_magnification"] = wilson(sum(bool(_raw_growth(r) >= rule.growth) for r in usable if _same_magnification(r)),
                                                        sum(_same_magnification(r) for r in usable))  # fmt: skip
    per_criterion["growth_equalised"] = wilson(sum(bool((_equalised_growth(r) or 0) >= rule.growth) for r in usable), n)
    by_dx_type: dict[str, list[bool]] = {}
    for r, f in zip(rows, deployed, strict=True):
        by_dx_type.setdefault(r["dx_type"], []).append(f is True)
    return {
        "pairs": n,
        "not_assessed": {
            "no_lesion_found": sum(statistics(r) is None for r in rows),
            "segmentations_overlap_too_little": sum(statistics(r) is not None and not rule.assessable(_dice(r)) for r in rows),
            **{k: v for k, v in wilson(sum(f is None for f in deployed), n).items() if k in ("rate", "ci95")},
        },
        "as_deployed_without_spacings": wilson(sum(f is True for f in deployed), n),
        "same_magnification_growth_assessed": {
            **wilson(sum(f is True for f in with_spacings), len(same)),
            "note": f"pairs at one apparent magnification (within x{SAME_MAGNIFICATION}), growth from their pixel areas: "
            "the rule as with known, equal pixel spacings",
        },
        "with_magnification_equalised": wilson(sum(f is True for f in equalised), n),
        "per_criterion": per_criterion,
        "as_deployed_by_dx_type": {k: wilson(sum(v), len(v)) for k, v in sorted(by_dx_type.items())},
    }


def detection(rows: list[dict[str, Any]], rule: Any) -> dict[str, Any]:
    """Pairs called changed per kind and amount (a pair not assessed is not detected)."""
    cells: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["kind"], r["amount"]), []).append(r)
    per_kind: dict[str, Any] = {}
    for (kind, amount), rs in sorted(cells.items()):
        calls = [_call(r, rule) for r in rs]
        by_criterion = {name: sum(bool(c is not None and rule.fires(statistics(r))[name]) for r, c in zip(rs, calls, strict=True))
                        for name in ("growth", "new_colour", "asymmetry")}  # fmt: skip
        truth = [r["truth"] for r in rs]
        per_kind.setdefault(kind, {"amounts": []})["amounts"].append({
            "amount": amount,
            **wilson(sum(c is True for c in calls), len(calls)),
            "not_assessed": sum(c is None for c in calls),
            "fired_by_criterion": by_criterion,
            "true_area_ratio_mean": round(float(np.mean([t["area_ratio"] for t in truth])), 4),
            "true_asymmetry_change_mean": round(float(np.mean([t["asymmetry_change"] for t in truth])), 4),
            "true_new_colour_rate": round(float(np.mean([bool(t["colours_gained"]) for t in truth])), 4),
            **({"by_new_colour": _by_new_colour(rs, calls)} if kind == "new_colour" else {}),
        })  # fmt: skip
    for kind, d in per_kind.items():
        if kind == "none":
            continue
        hit = [a for a in d["amounts"] if a["rate"] is not None and a["rate"] >= DETECTED]
        d[f"smallest_amount_detected_{int(100 * DETECTED)}pct"] = hit[0]["amount"] if hit else None
        if kind == "new_colour":
            hit = [a for a in d["amounts"] if (a["by_new_colour"]["excluding_shade_shifts"]["rate"] or 0) >= DETECTED]
            d[f"smallest_amount_detected_{int(100 * DETECTED)}pct_excluding_shade_shifts"] = hit[0]["amount"] if hit else None
    return per_kind


def _shade_shift(row: dict[str, Any]) -> bool:
    """The painted colour is a brown on a lesion that had the other brown (not a new colour to the rule)."""
    from skinlesion.explain.evolution import SHADE_OF

    gained = row["truth"]["colours_gained"]
    before = set(row["abcde"]["before"]["colours"]) if row["abcde"]["before"] else set()
    return bool(gained) and all(SHADE_OF.get(g) in before for g in gained)


def _by_new_colour(rows: list[dict[str, Any]], calls: list[bool | None]) -> dict[str, Any]:
    """Detection per painted colour, and among the pairs whose new colour is not a brown shade shift
    (which the rule does not count as a new colour, by design)."""
    groups: dict[str, list[bool]] = {}
    for r, c in zip(rows, calls, strict=True):
        key = (",".join(r["truth"]["colours_gained"]) or "none measured") + (" (shade shift)" if _shade_shift(r) else "")
        groups.setdefault(key, []).append(c is True)
    counted = [c is True for r, c in zip(rows, calls, strict=True) if not _shade_shift(r)]
    return {"per_colour": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(groups.items())},
            "excluding_shade_shifts": wilson(sum(counted), len(counted))}  # fmt: skip


def registration_quality(ham: list[dict[str, Any]], syn: list[dict[str, Any]], min_ncc: float) -> dict[str, Any]:
    out: dict[str, Any] = {"fit_threshold_ncc": min_ncc}
    if ham:
        regs = [r["registration"] for r in ham]
        out["ham10000"] = {
            "n": len(regs),
            "ncc_registered": _quantiles([g["ncc"] for g in regs]),
            "ncc_unregistered": _quantiles([g["ncc_unregistered"] for g in regs]),
            "mask_dice_registered": _quantiles([g["mask_dice"] for g in regs]),
            "fit_good": wilson(sum(g["ncc"] >= min_ncc for g in regs), len(regs)),
            "mask_dice_at_least_0.8": wilson(sum((g["mask_dice"] or 0) >= 0.8 for g in regs), len(regs)),
            "apparent_magnification_ratio": _quantiles([max(g["scale"], 1 / g["scale"]) for g in regs]),
        }
    by_kind: dict[str, list[dict]] = {}
    for r in syn:
        by_kind.setdefault(r["kind"], []).append(r)
    out["synthetic_by_kind"] = {}
    for kind, rs in by_kind.items():
        tre = [r["registration_error"]["tre_px"] for r in rs]
        out["synthetic_by_kind"][kind] = {
            "n": len(rs),
            "tre_px": _quantiles(tre),
            "tre_below_2px": wilson(sum(t < 2 for t in tre), len(tre)),
            "rotation_error_deg": _quantiles([r["registration_error"]["rotation_error_deg"] for r in rs]),
            "ncc": _quantiles([r["registration"]["ncc"] for r in rs]),
        }
    none = by_kind.get("none", [])
    if none:
        good = [r["registration"]["ncc"] for r in none if r["registration_error"]["tre_px"] < 2]
        bad = [r["registration"]["ncc"] for r in none if r["registration_error"]["tre_px"] >= 5]
        out["synthetic_none_ncc_when_tre_below_2px"] = _quantiles(good)
        out["synthetic_none_ncc_when_tre_5px_or_more"] = _quantiles(bad)
        out["synthetic_none_fit_good_but_tre_5px_or_more"] = sum(n >= min_ncc for n in bad)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from skinlesion.explain.evolution import CHANGE_RULE, REGISTRATION_MIN_NCC

    cache_dir = Path(args.cache_dir)
    started = time.perf_counter()
    out: dict[str, Any] = {"shipped_rule": {k: getattr(CHANGE_RULE, k) for k in ("growth", "new_colour", "asymmetry", "min_mask_dice", "target_false_alarm")}}
    ham_rows: list[dict] = []
    if args.max_ham_pairs != 0:
        root = Path(args.ham_root)
        pairs = ham_pairs(root, args.max_ham_pairs, args.seed)
        ham_rows = run_ham(root, pairs, _Cache(cache_dir / "ham.jsonl", args.reuse))
        calibration = [r for r in ham_rows if r["half"] == "calibration"]
        evaluation = [r for r in ham_rows if r["half"] == "evaluation"]
        out["ham10000"] = {
            "root": str(root),
            "pairs": len(ham_rows),
            "dx": {k: sum(r["dx"] == k for r in ham_rows) for k in sorted({r["dx"] for r in ham_rows})},
            "fitted_rule": fit_rule(calibration, CHANGE_RULE),
            "statistics_calibration_half_assessed": {
                "new_colour": _quantiles([statistics(r)["new_colour"] for r in _assessable(calibration, CHANGE_RULE)]),
                "asymmetry": _quantiles([statistics(r)["asymmetry"] for r in _assessable(calibration, CHANGE_RULE)]),
                "growth_same_magnification": _quantiles([_raw_growth(r) for r in _assessable(calibration, CHANGE_RULE) if _same_magnification(r)]),
                "growth_equalised": _quantiles([_equalised_growth(r) for r in _assessable(calibration, CHANGE_RULE)]),
                "area_ratio_unequalised": _quantiles([_area_ratio(r) for r in _assessable(calibration, CHANGE_RULE)]),
            },
            "false_alarms_evaluation_half": false_alarms(evaluation, CHANGE_RULE),
            "false_alarms_calibration_half": false_alarms(calibration, CHANGE_RULE),
        }
    syn_rows = run_synthetic(synthetic_cells(args.n_synthetic, args.kinds, args.amounts), args.seed, _Cache(cache_dir / "synthetic.jsonl", args.reuse)) if args.n_synthetic else []
    if syn_rows:
        out["synthetic"] = {"n_per_cell": args.n_synthetic, "detection": detection(syn_rows, CHANGE_RULE)}
    out["registration"] = registration_quality(ham_rows, syn_rows, REGISTRATION_MIN_NCC)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ham-root", default=str(DEFAULT_HAM), help=f"HAM10000 folder (default {DEFAULT_HAM}).")
    ap.add_argument("--max-ham-pairs", type=int, default=None, help="Use this many lesions' pairs (seeded sample; 0: none).")
    ap.add_argument("--n-synthetic", type=int, default=30, help="Synthetic pairs per kind and amount (3x for 'none'; 0: none).")
    ap.add_argument("--kinds", nargs="+", default=["none", *AMOUNTS], choices=["none", *AMOUNTS], help="Synthetic change kinds.")
    ap.add_argument("--amounts", type=float, nargs="+", default=None, help="Change amounts for every kind (default: each kind's grid).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=str(REPO / "runs" / "bench-evolution"), help="Per-pair statistics (JSON lines).")
    ap.add_argument("--reuse", action="store_true", help="Read the cached per-pair statistics instead of recomputing them.")
    args = ap.parse_args(argv)
    if args.n_synthetic < 0:
        ap.error(f"--n-synthetic must be >= 0, got {args.n_synthetic}")
    if args.max_ham_pairs is not None and args.max_ham_pairs < 0:
        ap.error(f"--max-ham-pairs must be >= 0, got {args.max_ham_pairs}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("evolution.py", parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
