"""Lenient JSON conversion for metrics and metadata files (NaN/inf become null, arrays lists)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_default(o: Any) -> Any:
    """``default=`` for :func:`json.dumps`: numpy scalars and arrays, tensors; anything else as str."""
    if isinstance(o, np.generic):
        v = o.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "tolist"):  # torch tensors
        return o.tolist()
    return str(o)
