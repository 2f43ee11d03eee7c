"""What the JSON benches share: one user-facing error type and the ``main`` that prints one JSON object."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any


class BenchError(Exception):
    """A user-facing problem with the arguments (printed without a traceback)."""


def json_main(name: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], dict[str, Any]]) -> int:
    """Run ``run(args)`` with library output sent to stderr, print its result as JSON on stdout.

    The result goes through :func:`~skinlesion.metrics.classification.to_jsonable` (numpy types to
    Python, NaN/inf to null) and anything else JSON cannot hold is written as its ``str``.
    Returns the exit status: 0, or 2 after a one-line error for BenchError / SkinLesionError.
    """
    from skinlesion.errors import SkinLesionError
    from skinlesion.metrics.classification import to_jsonable

    if not logging.getLogger().handlers:  # a script run; a caller (pytest) keeps its own logging
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):  # whatever a library prints: stdout carries the JSON only
            result = run(args)
    except (BenchError, SkinLesionError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    out.write(json.dumps(to_jsonable(result), indent=1, allow_nan=False, default=str) + "\n")
    out.flush()
    return 0
