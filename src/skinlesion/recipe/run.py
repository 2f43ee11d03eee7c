"""Running a recipe: its steps in order, resumably, recorded in ``recipe_state.json``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skinlesion.errors import ConfigError
from skinlesion.recipe.members import _train, train_side_by_side
from skinlesion.recipe.spec import BUNDLE_DIR, Recipe, distributed_rank, member_dir, member_trained
from skinlesion.recipe.state import read_state, total_minutes, write_state

log = logging.getLogger(__name__)


# -- steps ----------------------------------------------------------------------------------------
def _build(recipe: Recipe, out: Path) -> dict[str, Any]:
    from skinlesion.ensemble.build import build_bundle

    e = recipe.ensemble
    b = build_bundle(
        [member_dir(out, m.name) / "checkpoint" for m in recipe.members], out / BUNDLE_DIR, weighting=e.weights,
        tta=e.tta, average=e.average, temperature=e.temperature, data_root=recipe.data_root, name=recipe.name,
        overwrite=True, input_size=e.input_size,
    )
    return {"validation": b.meta["validation"], "weights": {m.name: m.weight for m in b.members}}


def _calibrate(recipe: Recipe, out: Path) -> dict[str, Any]:
    from skinlesion.calibration.thresholds import parse_targets
    from skinlesion.ensemble.build import calibrate_bundle

    c = recipe.calibrate
    decision = calibrate_bundle(
        out / BUNDLE_DIR, parse_targets(c.targets), confidence=c.confidence or None, bound=c.bound, prefer=c.prefer,
        fallback=c.fallback, conflict=c.conflict, data_root=recipe.data_root, policy=c.policy, ood=c.ood,
        ood_score=c.ood_score,
    )
    return {
        "thresholds": {k: {"threshold": v.get("threshold"), "status": v.get("status")} for k, v in decision["thresholds"].items()},
        "diagnosis": decision["diagnosis"]["selection"]["why"],
        "referral": (decision.get("referral") or {}).get("threshold"),
        "ood_threshold": (decision.get("ood") or {}).get("threshold"),
    }


def _review(recipe: Recipe, out: Path) -> dict[str, Any]:
    from skinlesion.uncertainty.review_fit import fit_review_flag

    r = recipe.review
    if r is None:
        raise ConfigError(f"recipe {recipe.name!r} has no review section")
    res = fit_review_flag(
        out / BUNDLE_DIR, n_samples=r.n_samples, score=r.score, goal=r.goal, target=r.target, data_root=recipe.data_root,
        test=r.test, method=r.method,
    )
    return {"threshold": res.get("threshold")}


def _evaluate(recipe: Recipe, out: Path) -> dict[str, Any]:
    from skinlesion.evaluation import evaluate_bundle

    e = recipe.evaluate
    evaluate_bundle(out / BUNDLE_DIR, split=e.split, out_dir=out / f"eval-{e.split}", data_root=recipe.data_root, n_boot=e.n_boot)
    return {"metrics": str(out / f"eval-{e.split}" / "metrics.json")}


def _card(recipe: Recipe, out: Path, recipe_path: Path) -> dict[str, Any]:
    from skinlesion.model_card import write_model_card

    return {"card": str(write_model_card(out, recipe, recipe_path))}


def run_recipe(
    recipe: Recipe, recipe_path: Path, out: str | Path, *, only: list[str] | None = None,
    on_step: Callable[[str, dict[str, Any]], None] | None = None, threads: int | None = None, smoke: bool = False,
    machine: list[str] | None = None, jobs: int = 1,
) -> dict[str, Any]:
    """Run (or resume) every step not yet finished in ``out``; returns the state. ``threads``
    overrides the members' ``trainer.threads`` (e.g. 1 while other work shares a 2-core machine).
    ``smoke``: run the recipe's smoke version on generated data (:func:`skinlesion.recipe_smoke.smoke_recipe`).
    ``machine``: training overrides applied after every member's own, for the machine it runs on
    (``trainer.devices=4``, ``trainer.strategy=ddp``, ``trainer.num_nodes=2``...). Under DDP every
    rank runs this function: ranks > 0 (:func:`distributed_rank`) only join the trainings, and rank 0
    alone writes the state and runs the steps after training.
    With ``recipe.seeds`` each seed is a whole run in ``out/seed-<s>`` (``only`` applies inside each).
    ``jobs`` > 1: up to that many members train side by side, each in its own process starting with
    ``cores // jobs`` threads and taking freed cores when fewer run (unless ``threads`` is given), its
    output in ``members/<name>/train.log`` (:func:`skinlesion.recipe.members.train_side_by_side`); the
    recorded total counts their overlapping time once."""
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if jobs > 1 and distributed_rank() > 0:
        raise ConfigError("jobs > 1 trains members side by side in one process tree; it does not run under DDP")
    out = Path(out)
    machine = [*(machine or []), *([f"trainer.threads={threads}"] if threads is not None else [])]
    if smoke:
        from skinlesion.recipe.smoke import smoke_recipe

        recipe = smoke_recipe(recipe, out)
    if recipe.seeds:
        return _run_seeds(recipe, recipe_path, out, only=only, on_step=on_step, machine=machine, jobs=jobs)
    return _run_one(recipe, recipe_path, out, only=only, on_step=on_step, machine=machine, jobs=jobs)


def _claim(out: Path, recipe: Recipe, recipe_path: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    state = read_state(out)
    if state.get("recipe") not in (None, recipe.name):
        raise ConfigError(f"{out} holds recipe {state['recipe']!r}, not {recipe.name!r}: choose another --out")
    state["recipe"] = recipe.name
    state["recipe_file"] = str(recipe_path)
    state.setdefault("steps", {})
    return state


def _run_seeds(
    recipe: Recipe, recipe_path: Path, out: Path, *, only: list[str] | None,
    on_step: Callable[[str, dict[str, Any]], None] | None, machine: list[str], jobs: int = 1,
) -> dict[str, Any]:
    from skinlesion.recipe.steps import seeds_summary

    state = _claim(out, recipe, recipe_path)
    state["seeds"] = list(recipe.seeds or [])
    # Every seed's trainings first, then the steps after training: under DDP the ranks > 0 take part
    # in the trainings only, and must not wait (past a collective's timeout) while rank 0 builds,
    # calibrates and evaluates a seed's bundle.
    for phase in ("train", "all"):
        if phase == "all" and distributed_rank() > 0:
            break
        for seed in recipe.seeds or []:
            sub = out / f"seed-{seed}"
            prefix = f"seed-{seed}/"

            def report(step: str, sub_state: dict[str, Any], prefix: str = prefix) -> None:
                if on_step is not None:
                    on_step(prefix + step, {"steps": {prefix + k: v for k, v in sub_state["steps"].items()}})

            sub_state = _run_one(recipe.for_seed(seed), recipe_path, sub, only=only, on_step=report, machine=machine,
                                 trainings_only=phase == "train", jobs=jobs)
            if phase == "train" or distributed_rank() > 0:
                continue
            state["steps"][f"seed-{seed}"] = {
                "status": "done", "seconds": round(total_minutes(sub_state) * 60, 1), "folder": str(sub),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            write_state(out, state)
    if distributed_rank() > 0:
        return state
    t0 = time.time()
    info = seeds_summary(recipe, out)
    state["steps"]["seeds"] = {"status": "done", "seconds": round(time.time() - t0, 1), **info,
                               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if on_step is not None:
        on_step("seeds", state)
    state["total_minutes"] = round(total_minutes(state), 1)
    state["within_budget"] = state["total_minutes"] <= recipe.budget_minutes
    write_state(out, state)
    return state


def _run_one(
    recipe: Recipe, recipe_path: Path, out: Path, *, only: list[str] | None,
    on_step: Callable[[str, dict[str, Any]], None] | None, machine: list[str], trainings_only: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    state = _claim(out, recipe, recipe_path)
    worker = distributed_rank() > 0
    specs = {m.name: m for m in recipe.members}
    if recipe.baseline is not None:
        specs[recipe.baseline.name] = recipe.baseline
    steps = recipe.steps()
    unknown = [s for s in only or [] if s not in steps]
    if unknown:
        raise ConfigError(f"--only names unknown step(s) {unknown}; the steps are {steps}")

    def wanted(step: str) -> bool:
        done = state["steps"].get(step, {}).get("status") == "done"
        return not ((only and step not in only) or (done and not only))

    def record(step: str, info: dict[str, Any]) -> None:
        state["steps"][step] = {
            "status": "done", "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info,
        }
        state["steps"] = {k: state["steps"][k] for k in [*steps, *state["steps"]] if k in state["steps"]}  # recipe order
        write_state(out, state)
        if on_step is not None:
            on_step(step, state)

    def has_checkpoint(step: str) -> bool:
        return member_trained(out, step.split(":", 1)[1])

    unfinished = [s for s in steps if s.startswith("train:") and wanted(s) and not has_checkpoint(s)]
    side_by_side = jobs > 1 and len(unfinished) > 1 and not worker
    if side_by_side:
        train_side_by_side(recipe, [s.split(":", 1)[1] for s in unfinished], specs, out, machine, jobs, record)
    for step in steps:
        if not wanted(step) or (side_by_side and step in unfinished):  # those were recorded as each finished
            continue
        if step.startswith("train:") and has_checkpoint(step) and state["steps"].get(step, {}).get("status") == "done":
            continue  # --only names a finished member: nothing to train, and its record (times) stays
        if (worker or trainings_only) and not step.startswith("train:"):
            continue  # rank 0 builds, calibrates and evaluates alone
        t0 = time.time()
        if step.startswith("train:"):
            trained = _train(recipe, specs[step.split(":", 1)[1]], out, machine)
            if trained is None:  # a DDP worker: nothing to record
                continue
            info = trained
            seconds = float(info.get("training_seconds") or (time.time() - t0))  # the training's own wall time
        else:
            from skinlesion.recipe import steps as recipe_steps

            info = {
                "build": lambda: _build(recipe, out),
                "calibrate": lambda: _calibrate(recipe, out),
                "review": lambda: _review(recipe, out),
                "evaluate": lambda: _evaluate(recipe, out),
                "official-test": lambda: recipe_steps.official_test(recipe, out),
                "concepts": lambda: recipe_steps.concepts(recipe, out),
                "explain": lambda: recipe_steps.explain(recipe, out),
                "export": lambda: recipe_steps.export(recipe, out),
                "card": lambda: _card(recipe, out, recipe_path),
            }[step]()
            seconds = time.time() - t0
        if step == "build":  # later steps refer to the old bundle
            for later in steps[steps.index("build") + 1:]:
                state["steps"].pop(later, None)
        record(step, {"seconds": round(seconds, 1), **info})
    if worker or trainings_only:
        return state
    state["total_minutes"] = round(total_minutes(state), 1)
    state["within_budget"] = state["total_minutes"] <= recipe.budget_minutes
    write_state(out, state)
    return state


def _shared_fp32_export(onnx_dir: Path) -> bool:
    """Whether ``onnx_dir`` holds an fp32-only export of shared-weight graphs (what a package carries)."""
    from skinlesion.delivery.onnx_runtime import OnnxError, read_manifest

    if not onnx_dir.is_dir():
        return False
    try:
        manifest = read_manifest(onnx_dir)
    except OnnxError as e:
        log.warning("not packaging %s: %s", onnx_dir, e)
        return False
    shared = manifest.get("precisions") == ["fp32"] and all(m.get("weights") == "member" for m in manifest["members"])
    if not shared:
        log.info("not packaging %s: only fp32 shared-weight exports go into a package (export.share_weights, no int8)", onnx_dir)
    return shared


def package_bundle(out: str | Path, into: str | Path) -> Path:
    """Copy the recipe's bundle (bundle.json, members, split manifest, validation caches, the
    out-of-distribution gate's arrays, concept bank, model card and its risk-coverage plot) into ``into`` (e.g. ``src/skinlesion/default_bundle``), replacing what was there.

    Its ONNX export goes along only when it is fp32 shared-weight graphs (``export.share_weights``,
    kB each: ``predict`` then runs ONNX Runtime by default); whole graphs would double the size."""
    import shutil

    src = Path(out) / BUNDLE_DIR
    if not (src / "bundle.json").is_file():
        raise ConfigError(f"{src} holds no bundle: run the recipe first")
    if not (src / "MODEL_CARD.md").is_file():
        raise ConfigError(f"{src}/MODEL_CARD.md is missing: run the recipe's card step first")
    dest = Path(into)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    keep = [
        "bundle.json", "MODEL_CARD.md", "members", "split_manifest.csv", "split_manifest.json", "validation.npz",
        "validation_no_metadata.npz", "ood_gate.npz", "concepts", "risk_coverage.png",
    ]
    if _shared_fp32_export(src / "onnx"):
        keep.append("onnx")
    tmp.mkdir(parents=True)
    for name in keep:
        p = src / name
        if p.is_dir():
            shutil.copytree(p, tmp / name)
        elif p.is_file():
            shutil.copy2(p, tmp / name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest
