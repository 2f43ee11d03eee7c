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

from skinlesion.recipe.members import _train
from skinlesion.recipe.run import package_bundle, run_recipe
from skinlesion.recipe.spec import (
    BUNDLE_DIR,
    RECIPE_DIR,
    STATE,
    MemberSpec,
    Recipe,
    distributed_rank,
    load_recipe,
    member_dir,
)
from skinlesion.recipe.state import read_state, total_minutes, wall_seconds

__all__ = [
    "BUNDLE_DIR", "RECIPE_DIR", "STATE", "MemberSpec", "Recipe", "_train", "distributed_rank", "load_recipe",
    "member_dir", "package_bundle", "read_state", "run_recipe", "total_minutes", "wall_seconds",
]
