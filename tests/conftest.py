"""Shared fixtures. No test touches the internet: the hub is forced offline here."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")  # belt and braces; timm reads the HF variable
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_HAM10000 = REPO_ROOT.parent / "shared" / "data" / "ham10000"


@pytest.fixture(scope="session")
def ham10000_root() -> Path:
    """The shared HAM10000 folder. When CI=true a missing folder is a failure, not a skip."""
    if not (SHARED_HAM10000 / "HAM10000_metadata.csv").is_file():
        msg = f"real-data test needs {SHARED_HAM10000} (HAM10000_metadata.csv + images/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + ", and CI=true forbids skipping it")
        pytest.skip(msg)
    return SHARED_HAM10000
