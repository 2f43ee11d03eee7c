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
