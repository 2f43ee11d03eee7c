"""Recipe files: the typed schema (pydantic, unknown keys are errors) and loading by name or path."""


from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skinlesion.errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parents[1] / "configs" / "recipes"
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
    input_size: tuple[int, int] | None = Field(
        None, description="(H, W) test-time resolution of every member (default: its training size)."
    )

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 8:
            raise ValueError(f"input_size must be [H, W] with both >= 8, got {list(v)}")
        return v


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
    share_weights: bool = Field(
        False, description="fp32 graphs without a copy of the members' weights (kB each; `recipe package` ships them)."
    )


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


def distributed_rank() -> int:
    """This process's global rank under torchrun, SLURM or Lightning's DDP launcher (0 when alone)."""
    import os

    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 0


def member_dir(out: Path, name: str) -> Path:
    return out / "members" / name


def member_trained(out: Path, name: str) -> bool:
    """Whether member ``name`` of the run in ``out`` finished training (its checkpoint was written)."""
    return (member_dir(out, name) / "checkpoint" / "checkpoint.json").is_file()
