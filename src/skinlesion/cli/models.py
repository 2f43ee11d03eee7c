"""``skinlesion models list``: the backbone registry."""

from __future__ import annotations

import shutil

import typer
from rich.console import Console
from rich.table import Table


models_app = typer.Typer(help="Backbones available for training.", no_args_is_help=True)


@models_app.command("list")
def list_command(
    pattern: str = typer.Argument("*", help="Glob over registry names."),
    testing: bool = typer.Option(False, "--testing", help="Include tiny test-only backbones."),
) -> None:
    """List backbones with input size, normalisation, Grad-CAM layer and offline weight sources."""
    from skinlesion.models.registry import get_spec, list_backbones

    t = Table("name", "input (HxW)", "mean/std", "Grad-CAM layer", "dropout", "pretrained sources")
    for name in list_backbones(pattern, include_testing=testing):
        s = get_spec(name)
        t.add_row(
            name,
            f"{s.input_size[0]}x{s.input_size[1]}",
            f"{tuple(round(m, 3) for m in s.mean)} / {tuple(round(v, 3) for v in s.std)}",
            s.target_layer,
            f"head {s.dropout.head_rate}, {s.dropout.backbone}",
            ", ".join(s.pretrained_sources),
        )
    # Wide enough for every column even when piped (rich would otherwise squeeze to 80).
    Console(width=max(170, shutil.get_terminal_size().columns)).print(t)
