"""A training recipe: one command that builds a whole decision bundle from scratch, resumably.

A recipe (YAML, see ``configs/recipes/ham10000-cpu.yaml``) names the ensemble members (each a
training preset plus overrides), an image-only baseline trained the same way (the reference that
every added choice is measured against), and the decision-layer steps. ``run_recipe`` executes

    train:<member>... -> train:baseline -> build -> calibrate -> review -> evaluate
        -> official-test -> concepts -> explain -> export -> card

(steps whose section is absent are left out) in ``OUT`` and records each finished step with its wall time in ``OUT/recipe_state.json``. A
re-run skips finished steps and resumes an interrupted training from its last Lightning state, so
a run cut off by the end of a session continues where it stopped. Thresholds, temperature, member
weights and the review flag are fitted on the validation split only; the test split is touched
once, by ``evaluate``, for the model card.

With ``seeds`` the whole pipeline runs once per seed, each in ``OUT/seed-<s>`` with its own bundle,
and a last step ``seeds`` writes the mean ± std of the test metrics over the seeds
(``OUT/seeds.json``, ``OUT/seeds.md``). With ``--smoke`` (``smoke`` section) the same steps run on
tiny generated data in the recipe's official file layout with tiny backbones, on a CPU in minutes
(:mod:`skinlesion.recipe_smoke`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

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
    n_samples: int = Field(10, gt=0)
    score: str = "mutual_information"
    goal: str = "error_fraction"
    target: float = 0.5
    test: bool = True  # also report the flag on the test split (a report only; nothing fitted uses it)


class EvaluateSpec(_Strict):
    split: str = "test"
    n_boot: int = Field(1000, ge=0)


class OfficialTestSpec(_Strict):
    """An official challenge test set scored as ``isic-challenge-scoring`` scores it (UNK included)."""

    ground_truth: str = Field(..., description="Official test ground-truth CSV (e.g. ISIC_2019_Test_GroundTruth.csv).")
    images: str = Field(..., description="Its image folder (e.g. ISIC_2019_Test_Input).")
    metadata: str | None = Field(None, description="Its metadata CSV (age/sex/site for fusion members).")
    required: bool = Field(False, description="Fail when the files are missing (default: the step notes it and passes).")


class ExplainSpec(_Strict):
    method: Literal["gradcam", "gradcam++"] = "gradcam++"
    n_images: int = Field(8, ge=1, description="Test images explained, the classes in turn.")
    mc_samples: int | None = Field(None, ge=0, description="MC-dropout passes (null: the review flag's).")
    concepts: bool = Field(False, description="Learn a TCAV concept bank (ABCDE concepts) before explaining.")
    concept_split: str = "train"
    concept_n_per_class: int = Field(40, ge=1)
    concept_runs: int = Field(10, ge=2)
    concept_random_pool: int = Field(100, ge=4)
    concept_min_examples: int = Field(5, ge=2)


class ExportSpec(_Strict):
    onnx: bool = True
    int8: bool = False
    n_parity: int = Field(4, ge=1)


class SmokeSpec(_Strict):
    """How ``--smoke`` shrinks the recipe: generated data, tiny backbones, a few steps."""

    dataset: Literal["isic2018", "isic2019"]
    lesions_per_class: int = Field(4, ge=3)
    image_size: tuple[int, int] = (64, 80)
    test_images_per_class: int = Field(1, ge=0, description="isic2019: official-test images per class (plus UNK ones).")
    test_unknown: int = Field(3, ge=0, description="isic2019: official-test images whose ground truth is UNK.")
    seeds: list[int] | None = Field(None, description="Seeds in smoke mode (default: the recipe's).")
    set: list[str] = Field(default_factory=list, description="Overrides of every member, after its own.")
    members: dict[str, list[str]] = Field(default_factory=dict, description="Overrides of one member, after `set`.")
    recipe: dict[str, Any] = Field(default_factory=dict, description="Recipe sections replaced in smoke mode (merged).")


class Recipe(_Strict):
    name: str
    description: str = ""
    data_root: str | None = Field(None, description="Overrides data.root of every member (default: the presets').")
    set: list[str] = Field(default_factory=list, description="Overrides of every member, before its own.")
    seeds: list[int] | None = Field(None, min_length=1, description="One bundle per seed, then mean ± std over them.")
    members: list[MemberSpec] = Field(..., min_length=1)
    baseline: MemberSpec | None = None
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    calibrate: CalibrateSpec = Field(default_factory=CalibrateSpec)
    review: ReviewSpec | None = Field(default_factory=ReviewSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    official_test: OfficialTestSpec | None = None
    explain: ExplainSpec | None = None
    export: ExportSpec | None = None
    smoke: SmokeSpec | None = None
    budget_minutes: float = Field(120.0, gt=0)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

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
        s += ["build", "calibrate"] + (["review"] if self.review is not None else []) + ["evaluate"]
        s += ["official-test"] if self.official_test is not None else []
        s += ["concepts"] if self.explain is not None and self.explain.concepts else []
        s += ["explain"] if self.explain is not None else []
        s += ["export"] if self.export is not None and self.export.onnx else []
        return s + ["card"]

    def for_seed(self, seed: int) -> Recipe:
        """This recipe with every member (and the baseline) trained with ``seed``, no seed list."""
        def seeded(m: MemberSpec) -> MemberSpec:
            return m.model_copy(update={"set": [*m.set, f"seed={seed}"]})

        return self.model_copy(update={
            "seeds": None, "members": [seeded(m) for m in self.members],
            "baseline": seeded(self.baseline) if self.baseline is not None else None,
        })


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


def distributed_rank() -> int:
    """This process's global rank under torchrun, SLURM or Lightning's DDP launcher (0 when alone)."""
    import os

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def _train(recipe: Recipe, spec: MemberSpec, out: Path, machine: list[str] | None = None) -> dict[str, Any] | None:
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    overrides = [f"name={recipe.name}-{spec.name}", *recipe.set, *spec.set]
    if recipe.data_root is not None:
        overrides.append(f"data.root={recipe.data_root}")
    overrides += machine or []  # properties of the machine, not of the model (threads, devices, nodes)
    cfg = load_config(spec.preset, overrides)
    run_dir = member_dir(out, spec.name)
    finished = (run_dir / "checkpoint" / "checkpoint.json").is_file()
    if not finished:
        resume = (run_dir / "lightning" / "last.ckpt").is_file()
        log.info("training %s (%s%s)", spec.name, spec.preset, ", resuming" if resume else "")
        train(cfg, run_dir=run_dir, resume=resume)
    if distributed_rank() > 0:  # a DDP worker joins the training; rank 0 records it
        return None
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
    if r is None:
        raise ConfigError(f"recipe {recipe.name!r} has no review section")
    res = fit_review_flag(
        out / BUNDLE_DIR, n_samples=r.n_samples, score=r.score, goal=r.goal, target=r.target, data_root=recipe.data_root,
        test=r.test,
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
    machine: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every step not yet finished in ``out``; returns the state. ``threads``
    overrides the members' ``trainer.threads`` (e.g. 1 while other work shares a 2-core machine).
    ``smoke``: run the recipe's smoke version on generated data (:func:`skinlesion.recipe_smoke.smoke_recipe`).
    ``machine``: training overrides applied after every member's own, for the machine it runs on
    (``trainer.devices=4``, ``trainer.strategy=ddp``, ``trainer.num_nodes=2``...). Under DDP every
    rank runs this function: ranks > 0 (:func:`distributed_rank`) only join the trainings, and rank 0
    alone writes the state and runs the steps after training.
    With ``recipe.seeds`` each seed is a whole run in ``out/seed-<s>`` (``only`` applies inside each)."""
    out = Path(out)
    machine = [*(machine or []), *([f"trainer.threads={threads}"] if threads is not None else [])]
    if smoke:
        from skinlesion.recipe_smoke import smoke_recipe

        recipe = smoke_recipe(recipe, out)
    if recipe.seeds:
        return _run_seeds(recipe, recipe_path, out, only=only, on_step=on_step, machine=machine)
    return _run_one(recipe, recipe_path, out, only=only, on_step=on_step, machine=machine)


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
    on_step: Callable[[str, dict[str, Any]], None] | None, machine: list[str],
) -> dict[str, Any]:
    from skinlesion.recipe_steps import seeds_summary

    state = _claim(out, recipe, recipe_path)
    state["seeds"] = list(recipe.seeds or [])
    for seed in recipe.seeds or []:
        sub = out / f"seed-{seed}"
        prefix = f"seed-{seed}/"

        def report(step: str, sub_state: dict[str, Any], prefix: str = prefix) -> None:
            if on_step is not None:
                on_step(prefix + step, {"steps": {prefix + k: v for k, v in sub_state["steps"].items()}})

        sub_state = _run_one(recipe.for_seed(seed), recipe_path, sub, only=only, on_step=report, machine=machine)
        if distributed_rank() > 0:
            continue
        state["steps"][f"seed-{seed}"] = {
            "status": "done", "seconds": round(total_minutes(sub_state) * 60, 1), "folder": str(sub),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        _write_state(out, state)
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
    _write_state(out, state)
    return state


def _run_one(
    recipe: Recipe, recipe_path: Path, out: Path, *, only: list[str] | None,
    on_step: Callable[[str, dict[str, Any]], None] | None, machine: list[str],
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
    for step in steps:
        done = state["steps"].get(step, {}).get("status") == "done"
        if (only and step not in only) or (done and not only):
            continue
        if worker and not step.startswith("train:"):
            continue  # rank 0 builds, calibrates and evaluates alone
        t0 = time.time()
        if step.startswith("train:"):
            trained = _train(recipe, specs[step.split(":", 1)[1]], out, machine)
            if trained is None:  # a DDP worker: nothing to record
                continue
            info = trained
            seconds = float(info.get("training_seconds") or (time.time() - t0))  # the training's own wall time
        else:
            from skinlesion import recipe_steps

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
        state["steps"][step] = {
            "status": "done", "seconds": round(seconds, 1), "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **info,
        }
        if step == "build":  # later steps refer to the old bundle
            for later in steps[steps.index("build") + 1:]:
                state["steps"].pop(later, None)
        _write_state(out, state)
        if on_step is not None:
            on_step(step, state)
    if worker:
        return state
    state["total_minutes"] = round(total_minutes(state), 1)
    state["within_budget"] = state["total_minutes"] <= recipe.budget_minutes
    _write_state(out, state)
    return state


def package_bundle(out: str | Path, into: str | Path) -> Path:
    """Copy the recipe's bundle (bundle.json, members, split manifest, validation cache, model card)
    into ``into`` (e.g. ``src/skinlesion/default_bundle``), replacing what was there."""
    import shutil

    src = Path(out) / BUNDLE_DIR
    if not (src / "bundle.json").is_file():
        raise ConfigError(f"{src} holds no bundle: run the recipe first")
    if not (src / "MODEL_CARD.md").is_file():
        raise ConfigError(f"{src}/MODEL_CARD.md is missing: run the recipe's card step first")
    dest = Path(into)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    keep = ["bundle.json", "MODEL_CARD.md", "members", "split_manifest.csv", "split_manifest.json", "validation.npz", "validation_no_metadata.npz"]
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
