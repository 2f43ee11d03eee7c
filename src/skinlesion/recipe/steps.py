"""The recipe steps after evaluation: official test set, concept bank, explanations, ONNX export,
and the summary over seeds. Each returns what ``recipe_state.json`` records for it."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from skinlesion.errors import ConfigError
from skinlesion.recipe.spec import BUNDLE_DIR, Recipe

log = logging.getLogger(__name__)


def official_test(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Score the bundle on the official test set as isic-challenge-scoring does (UNK included)."""
    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.evaluation.official import score_official_test

    spec = recipe.official_test
    if spec is None:
        raise ConfigError(f"recipe {recipe.name!r} has no official_test section")
    gt, images = Path(spec.ground_truth), Path(spec.images)
    if not (gt.is_file() and images.is_dir()):
        msg = (f"official test set not found ({gt}, {images}): download it with "
               "`skinlesion data download isic2019 --split test`")
        if spec.required:
            raise ConfigError(msg)
        log.warning("%s; step skipped", msg)
        return {"skipped": msg}
    res = score_official_test(load_bundle(out / BUNDLE_DIR), gt, images, out / "official-test", metadata_csv=spec.metadata)
    return {"balanced_accuracy": res["balanced_accuracy"], "n_images": res["n_images"], "n_unk": res["n_unk"],
            "recall_UNK": res["recall"].get("UNK"), "official": res["official"],
            "report": str(out / "official-test" / "official_test.json")}


def concepts(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Learn the TCAV concept bank (ABCDE concepts) of every member; saved in ``<bundle>/concepts``."""
    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.explain.concept_bank import learn_concept_bank

    e = recipe.explain
    if e is None:
        raise ConfigError(f"recipe {recipe.name!r} has no explain section")
    bundle = load_bundle(out / BUNDLE_DIR)
    bank = learn_concept_bank(
        bundle, split=e.concept_split, n_per_class=e.concept_n_per_class, n_runs=e.concept_runs,
        data_root=recipe.data_root, min_concept_examples=e.concept_min_examples, random_pool_size=e.concept_random_pool,
    )
    saved = bank.save(out / BUNDLE_DIR / "concepts")
    rows = bank.table()
    return {"folder": str(saved), "concepts": list(bank.concepts), "significant": sum(bool(r["significant"]) for r in rows),
            "tests": len(rows), "notes": list(bank.notes)}


def explain(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Explain ``n_images`` test images (the classes in turn): CAM, ABCDE, concepts, MC-dropout
    uncertainty (epistemic/aleatoric) and review flag, written to ``OUT/explain``."""
    import numpy as np

    from skinlesion.ensemble.bundle import load_bundle
    from skinlesion.ensemble.split import load_bundle_split
    from skinlesion.explain.pipeline import write_explanation

    e = recipe.explain
    if e is None:
        raise ConfigError(f"recipe {recipe.name!r} has no explain section")
    bundle = load_bundle(out / BUNDLE_DIR)
    table = load_bundle_split(bundle, recipe.evaluate.split, recipe.data_root)
    labels = table.frame["label"].astype(str).to_numpy()
    by_class = [list(np.flatnonzero(labels == c)) for c in bundle.classes]
    picked: list[int] = []
    while len(picked) < min(e.n_images, len(table)):
        for rows in by_class:
            if rows and len(picked) < e.n_images:
                picked.append(int(rows.pop(0)))
    folder = out / "explain"
    summary = []
    for i in picked:
        row = table.frame.iloc[i]
        res = write_explanation(bundle, row["path"], folder, method=e.method, mc_samples=e.mc_samples,
                                concepts=(out / BUNDLE_DIR / "concepts").is_dir())
        unc = res.get("uncertainty") or {}
        summary.append({
            "image_id": str(row["image_id"]), "truth": str(row["label"]), "diagnosis": res["prediction"]["decision"],
            "cam": res["attention"]["method"], "abcde": res.get("abcde") is not None,
            "concepts": bool((res.get("concepts") or {}).get("available", False)),
            "epistemic": unc.get("epistemic_mutual_information"), "aleatoric": unc.get("aleatoric_expected_entropy"),
            "review": (unc.get("review") or {}).get("flag"),
        })
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"folder": str(folder), "n_images": len(summary), "method": e.method,
            "review_flags": sum(bool(s["review"]) for s in summary)}


def export(recipe: Recipe, out: Path) -> dict[str, Any]:
    """ONNX graphs of every member (+ INT8), checked against PyTorch, in ``<bundle>/onnx``."""
    from skinlesion.delivery.onnx_export import export_bundle_onnx
    from skinlesion.ensemble.bundle import load_bundle

    e = recipe.export
    if e is None:
        raise ConfigError(f"recipe {recipe.name!r} has no export section")
    folder = export_bundle_onnx(
        load_bundle(out / BUNDLE_DIR), int8=e.int8, n_parity=e.n_parity, data_root=recipe.data_root, share_weights=e.share_weights
    )
    return {"folder": str(folder), "int8": e.int8, "share_weights": e.share_weights}


def _metric(metrics: dict[str, Any], rule: str, key: str) -> float | None:
    part = metrics.get(rule) or {}
    v = (part.get("metrics") or {}).get(key)
    if v is None:
        v = ((part.get("intervals") or {}).get(key) or {}).get("estimate")
    return float(v) if v is not None else None


def _mean_std(values: list[float | None]) -> dict[str, Any]:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n": len(xs)}


def seeds_summary(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Mean ± std (sample std, n-1) over the seeds' bundles of the test metrics, in
    ``OUT/seeds.json`` and ``OUT/seeds.md``."""
    rows = []
    for seed in recipe.seeds or []:
        f = out / f"seed-{seed}" / f"eval-{recipe.evaluate.split}" / "metrics.json"
        if not f.is_file():
            raise ConfigError(f"{f} is missing: seed {seed}'s run did not finish its evaluate step")
        m = json.loads(f.read_text())
        rows.append({"seed": seed, **{f"{rule}_{k}": _metric(m, rule, k)
                                       for rule in ("argmax", "diagnosis", "decision") for k in ("bacc", "malignant_bacc")}})
    keys = [k for k in rows[0] if k != "seed"]
    stats = {k: _mean_std([r[k] for r in rows]) for k in keys}
    result = {"split": recipe.evaluate.split, "seeds": rows, "mean_std": stats, "std": "sample standard deviation (n-1)"}
    (out / "seeds.json").write_text(json.dumps(result, indent=2))

    def fmt(s: dict[str, Any]) -> str:
        if s["mean"] is None:
            return "n/a"
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["std"] is not None else f"{s['mean']:.3f}"

    lines = [f"# {recipe.name}: {len(rows)} seeds, {recipe.evaluate.split} split\n",
             "| seed | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {r['seed']} | " + " | ".join("n/a" if r[k] is None else f"{r[k]:.3f}" for k in keys) + " |" for r in rows]
    lines.append("| mean ± std | " + " | ".join(fmt(stats[k]) for k in keys) + " |")
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    return {"bacc": fmt(stats["argmax_bacc"]), "diagnosis_bacc": fmt(stats["diagnosis_bacc"]),
            "decision_bacc": fmt(stats["decision_bacc"]),
            "summary": str(out / "seeds.json")}
