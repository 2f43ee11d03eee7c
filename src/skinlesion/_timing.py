"""Wall time of recorded steps (a recipe's ``recipe_state.json``), with parallel steps counted once."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def wall_seconds(steps: dict[str, dict[str, Any]]) -> float:
    """The recorded wall time of ``steps``: steps run one after another add up; trainings run side
    by side (``jobs`` > 1, marked ``concurrent``) count the union of their ``[started, started +
    seconds]`` intervals, so time they overlapped is counted once (plus, for a resumed one, the
    ``earlier_seconds`` its earlier processes took, counted in full)."""
    total, spans = 0.0, []
    for s in steps.values():
        if s.get("concurrent") and s.get("started"):
            t0 = datetime.fromisoformat(s["started"]).timestamp()
            spans.append((t0, t0 + float(s.get("seconds", 0.0))))
            total += float(s.get("earlier_seconds", 0.0))  # a resumed training's earlier processes: not overlapped
        else:
            total += float(s.get("seconds", 0.0))
    end = float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
