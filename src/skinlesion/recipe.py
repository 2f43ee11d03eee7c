"""A training recipe: one command that builds a whole decision bundle from scratch, resumably.

A recipe (YAML, see ``configs/recipes/ham10000-cpu.yaml``) names the ensemble members (each a
training preset plus overrides), an image-only baseline trained the same way (the reference that
every added choice is measured against), and the decision-layer steps. ``run_recipe`` executes

    train:<member>... -> train:baseline -> build -> calibrate -> review -> evaluate -> card

in ``OUT`` and records each finished step with its wall time in ``OUT/recipe_state.json``. A
re-run skips finished steps and resumes an interrupted training from its last Lightning state, so
a run cut off by the end of a session continues where it stopped. Thresholds, temperature, member
weights and the review flag are fitted on the validation split only; the test split is touched
once, by ``evaluate``, for the model card.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skinlesion.errors import ConfigError

log = logging.getLogger(__name__)
RECIPE_DIR = Path(__file__).resolve().parent / "configs" / "recipes"
STATE = "recipe_state.json"
BUNDLE_DIR = "bundle"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemberSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    preset: str = "cpu"
    set: list[str] = Field(default_factory=list, description="Training overrides, as `skinlesion train --set`.")


class EnsembleSpec(_Strict):
    weights: str = "bacc"
    tta: str = "d4"
    average: str = "prob"
    temperature: str = "ensemble"


class CalibrateSpec(_Strict):
    targets: str = "MEL:sens=0.85,spec=0.85 AKIEC:sens=0.75,spec=0.70"
    confidence: float = Field(0.95, ge=0.0, lt=1.0)
    bound: str = "clopper-pearson"
    prefer: str = "balanced"
    fallback: str = "keep_sensitivity"
    conflict: str = "priority"
    policy: str = "diagnosis"  # or "priority-threshold", the reference system's rule
    ood: bool = True  # fit the out-of-distribution gate
    ood_score: str = "knn"


class ReviewSpec(_Strict):
    method: str = "mc_dropout"  # or "ensemble": members x TTA views, no extra passes when serving
    n_samples: int = Field(10, gt=0)
    score: str = "mutual_information"
    goal: str = "error_fraction"
    target: float = 0.5
    test: bool = True  # also report the flag on the test split (a report only; nothing fitted uses it)


class EvaluateSpec(_Strict):
    split: str = "test"
    n_boot: int = Field(1000, ge=0)


class Recipe(_Strict):
    name: str
    description: str = ""
    data_root: str | None = Field(None, description="Overrides data.root of every member (default: the presets').")
    members: list[MemberSpec] = Field(..., min_length=1)
    baseline: MemberSpec | None = None
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    calibrate: CalibrateSpec = Field(default_factory=CalibrateSpec)
    review: ReviewSpec | None = Field(default_factory=ReviewSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    budget_minutes: float = Field(120.0, gt=0)

    @field_validator("members")
    @classmethod
    def _unique(cls, v: list[MemberSpec]) -> list[MemberSpec]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be distinct, got {names}")
        return v

    @model_validator(mode="after")
    def _baseline_name(self) -> Recipe:
        if self.baseline is not None and self.baseline.name in {m.name for m in self.members}:
            raise ValueError(f"baseline name {self.baseline.name!r} is also a member name")
        return self

    def steps(self) -> list[str]:
        s = [f"train:{m.name}" for m in self.members]
        if self.baseline is not None:
            s.append(f"train:{self.baseline.name}")
        s += ["build", "calibrate"] + (["review"] if self.review is not None else []) + ["evaluate", "card"]
        return s


def load_recipe(path_or_name: str | Path) -> tuple[Recipe, Path]:
    """A recipe from a YAML file or a packaged name (``configs/recipes/<name>.yaml``)."""
    p = Path(path_or_name)
    if not p.is_file():
        p = RECIPE_DIR / f"{path_or_name}.yaml"
    if not p.is_file():
        have = sorted(q.stem for q in RECIPE_DIR.glob("*.yaml"))
        raise ConfigError(f"Recipe {str(path_or_name)!r} is neither a file nor a packaged recipe; packaged: {have}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    try:
        return Recipe.model_validate(raw), p
    except Exception as e:  # pydantic ValidationError: name the field
        raise ConfigError(f"{p}: {e}") from None


# -- state ----------------------------------------------------------------------------------------
def read_state(out: Path) -> dict[str, Any]:
    f = out / STATE
    if not f.is_file():
        return {"steps": {}}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f}: not valid JSON ({e}); fix or delete it (finished trainings are kept either way)") from None


def _write_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(out / STATE)


def total_minutes(state: dict[str, Any]) -> float:
    return sum(float(s.get("seconds", 0.0)) for s in state.get("steps", {}).values()) / 60.0


# -- steps ----------------------------------------------------------------------------------------
def member_dir(out: Path, name: str) -> Path:
    return out / "members" / name


def _train(recipe: Recipe, spec: MemberSpec, out: Path, threads: int | None = None) -> dict[str, Any]:
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    overrides = [f"name={recipe.name}-{spec.name}", *spec.set]
    if recipe.data_root is not None:
        overrides.append(f"data.root={recipe.data_root}")
    if threads is not None:  # a property of the machine, not of the model
        overrides.append(f"trainer.threads={threads}")
    cfg = load_config(spec.preset, overrides)
    run_dir = member_dir(out, spec.name)
    finished = (run_dir / "checkpoint" / "checkpoint.json").is_file()
    if not finished:
        resume = (run_dir / "lightning" / "last.ckpt").is_file()
        log.info("training %s (%s%s)", spec.name, spec.preset, ", resuming" if resume else "")
        train(cfg, run_dir=run_dir, resume=resume)
    meta = json.loads((run_dir / "checkpoint" / "checkpoint.json").read_text())
    return {
        "checkpoint": str(run_dir / "checkpoint"),
        "val_bacc": meta["validation"].get("bacc"),
        "epochs": meta["training"].get("epochs_completed"),
        "training_seconds": meta["training"].get("wall_time_s"),
        "overrides": overrides,
    }


def _build(recipe: Recipe, out: Path) -> dict[str, Any]:
    from skinlesion.ensemble.build import build_bundle

    e = recipe.ensemble
    b = build_bundle(
        [member_dir(out, m.name) / "checkpoint" for m in recipe.members], out / BUNDLE_DIR, weighting=e.weights,
        tta=e.tta, average=e.average, temperature=e.temperature, data_root=recipe.data_root, name=recipe.name,
        overwrite=True,
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
    assert r is not None
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
    on_step: Callable[[str, dict[str, Any]], None] | None = None, threads: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) every step not yet finished in ``out``; returns the state. ``threads``
    overrides the members' ``trainer.threads`` (e.g. 1 while other work shares a 2-core machine)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = read_state(out)
    if state.get("recipe") not in (None, recipe.name):
        raise ConfigError(f"{out} holds recipe {state['recipe']!r}, not {recipe.name!r}: choose another --out")
    state["recipe"] = recipe.name
    state["recipe_file"] = str(recipe_path)
    state.setdefault("steps", {})
    specs = {m.name: m for m in recipe.members}
    if recipe.baseline is not None:
        specs[recipe.baseline.name] = recipe.baseline
    steps = recipe.steps()
    unknown = [s for s in only or [] if s not in steps]
    if unknown:
        raise ConfigError(f"--only names unknown step(s) {unknown}; the steps are {steps}")
    for step in steps:
        done = state["steps"].get(step, {}).get("status") == "done"
        if (only and step not in only) or (done and not only):
            continue
        t0 = time.time()
        if step.startswith("train:"):
            info = _train(recipe, specs[step.split(":", 1)[1]], out, threads)
            seconds = float(info.get("training_seconds") or (time.time() - t0))  # the training's own wall time
        else:
            info = {
                "build": lambda: _build(recipe, out),
                "calibrate": lambda: _calibrate(recipe, out),
                "review": lambda: _review(recipe, out),
                "evaluate": lambda: _evaluate(recipe, out),
                "card": lambda: _card(recipe, out, recipe_path),
            }[step]()
            seconds = time.time() - t0
        state["steps"][step] = {
            "status": "done", "seconds": round(seconds, 1), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **info,
        }
        if step == "build":  # later steps refer to the old bundle
            for later in ("calibrate", "review", "evaluate", "card"):
                state["steps"].pop(later, None)
        _write_state(out, state)
        if on_step is not None:
            on_step(step, state)
    state["total_minutes"] = round(total_minutes(state), 1)
    state["within_budget"] = state["total_minutes"] <= recipe.budget_minutes
    _write_state(out, state)
    return state


def package_bundle(out: str | Path, into: str | Path) -> Path:
    """Copy the recipe's bundle (bundle.json, members, split manifest, validation caches, the
    out-of-distribution gate's arrays, concept bank, model card and its risk-coverage plot) into ``into`` (e.g. ``src/skinlesion/default_bundle``), replacing what was there."""
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
