"""Parameter checks shared by library functions; messages name the parameter and what it got."""

from __future__ import annotations

from typing import Any

import numpy as np


def positive_int(parameter: str, value: Any, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (None passes when ``allow_none``); ValueError otherwise."""
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"The '{parameter}' parameter must be a positive integer. Got {value!r} instead.")
    return int(value)


def unit_rate(parameter: str, value: Any) -> float:
    """``value`` as a float in [0, 1) (a dropout rate); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"The '{parameter}' parameter must be a float in [0, 1). Got {value!r} instead.")
    return float(value)


def hw_text(size: Any) -> str:
    """An (H, W) size as ``"HxW"`` (``""`` for none)."""
    return "x".join(str(int(v)) for v in size or [])


def parse_hw(text: str, option: str, minimum: int = 8) -> tuple[int, int]:
    """``"144x192"`` -> ``(144, 192)``; a ValueError naming ``option`` otherwise (both sides >= ``minimum``)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{option} must be HxW (e.g. 144x192), got {text!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"{option} must be HxW with both sides >= {minimum}, got {text!r}")
    return h, w
