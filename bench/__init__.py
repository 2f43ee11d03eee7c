"""Benchmarks that print one JSON object on stdout (logs on stderr); not part of the test suite.

Run one from the repository root as a module or as a file, with the same flags::

    python -m bench.quality --bundle runs/bench-bundle
    python bench/quality.py --bundle runs/bench-bundle

Every bench has ``parse_args(argv)``, ``run(args) -> dict`` and ``main(argv) -> int``, which hands
both to :func:`bench._cli.json_main` (the JSON on stdout, a one-line error and status 2 for a
user-facing problem). ``train_speed`` prints JSON lines instead (one per measurement).
Statistics live in the library (:mod:`skinlesion.metrics.bootstrap`), not here.
"""
