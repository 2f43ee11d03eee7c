"""``python -m skinlesion.samples PREDICTIONS_DIR`` prints the sample table; ``--csv`` prints the samples' list path."""

from __future__ import annotations

import sys

from skinlesion.samples import SAMPLES_CSV, summary_table


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--csv"]:
        print(SAMPLES_CSV)
        return 0
    if len(args) != 1:
        print("usage: python -m skinlesion.samples PREDICTIONS_DIR | --csv", file=sys.stderr)
        return 2
    try:
        print(summary_table(args[0]))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
