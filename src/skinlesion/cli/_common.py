"""Helpers shared by the CLI commands: turn user-facing errors into one red line and exit 1."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from skinlesion.classes import UnknownLabelError
from skinlesion.errors import SkinLesionError

console = Console(stderr=False)
err_console = Console(stderr=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print known user errors without a traceback and exit with status 1."""
    try:
        yield
    except (SkinLesionError, UnknownLabelError, FileNotFoundError, ValueError) as e:
        # ValueError covers parameter checks (unknown backbone, bad split name...), worded for users.
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


def parse_hw(text: str, option: str) -> tuple[int, int]:
    """``"144x192"`` -> ``(144, 192)`` (:func:`skinlesion._params.parse_hw`); a BadParameter naming ``option`` otherwise."""
    from skinlesion._params import parse_hw as parse

    try:
        return parse(text, option)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
