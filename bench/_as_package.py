"""Lets ``python bench/<name>.py`` import its siblings as the package ``bench``, as ``python -m`` does.

Python puts a script's own folder first on its module path, so a bench run as a file finds this
module by name (``if not __package__: import _as_package``). It registers this folder as the package
``bench`` (importlib's recipe for importing a source file directly), so ``from bench._cli import
json_main`` then works the same in both ways of running, and the module path is left as it is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if "bench" not in sys.modules:
    _here = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location("bench", _here / "__init__.py", submodule_search_locations=[str(_here)])
    _package = importlib.util.module_from_spec(_spec)
    sys.modules["bench"] = _package
    _spec.loader.exec_module(_package)  # type: ignore[union-attr]
