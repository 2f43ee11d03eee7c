"""Wall time of recorded steps (a recipe's ``recipe_state.json``), with parallel steps counted once."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def wall_seconds(steps: dict[str, dict[str, Any]]) -> float:
    """The recorded wall time of ``steps``: steps run one after another add up; trainings run side
    by side (``jobs`` > 1, marked ``concurrent``) count the union of their ``[started, started +
    seconds]`` intervals, so time they overlapped is counted once. A resumed one's earlier processes
    join the union where their starts are recorded (``earlier_processes``: ``[started, seconds]``
    each); what ``earlier_seconds`` holds beyond them (a record without starts) counts in full."""
    total, spans = 0.0, []
    for s in steps.values():
        if s.get("concurrent") and s.get("started"):
            t0 = datetime.fromisoformat(s["started"]).timestamp()
            spans.append((t0, t0 + float(s.get("seconds", 0.0))))
            known = 0.0
            for started, seconds in s.get("earlier_processes", []):
                a = datetime.fromisoformat(started).timestamp()
                spans.append((a, a + float(seconds)))
                known += float(seconds)
            total += max(0.0, float(s.get("earlier_seconds", 0.0)) - known)  # earlier processes of unknown start
        else:
            total += float(s.get("seconds", 0.0))
    end = float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total
