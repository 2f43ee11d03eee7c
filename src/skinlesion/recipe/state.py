"""A recipe run's record, ``recipe_state.json``: reading, writing and its wall time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from skinlesion._timing import wall_seconds
from skinlesion.errors import ConfigError
from skinlesion.recipe.spec import STATE


def read_state(out: Path) -> dict[str, Any]:
    f = out / STATE
    if not f.is_file():
        return {"steps": {}}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f}: not valid JSON ({e}); fix or delete it (finished trainings are kept either way)") from None


def write_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(out / STATE)


def total_minutes(state: dict[str, Any]) -> float:
    return wall_seconds(state.get("steps", {})) / 60.0
