"""The ``skinlesion`` command: sub-apps composed in one place."""

from __future__ import annotations

import logging
import os

import typer

from skinlesion import __version__
from skinlesion.cli.audit import audit_app
from skinlesion.cli.compare import compare_command
from skinlesion.cli.data import data_app
from skinlesion.cli.demo import demo_command
from skinlesion.cli.ensemble import calibrate_command, ensemble_app
from skinlesion.cli.evaluate import evaluate_command
from skinlesion.cli.explain import explain_app
from skinlesion.cli.export import export_app
from skinlesion.cli.models import models_app
from skinlesion.cli.predict import predict_command
from skinlesion.cli.recipe import recipe_app
from skinlesion.cli.serve import serve_command
from skinlesion.cli.train import train_command

app = typer.Typer(
    name="skinlesion",
    help="Dermoscopic skin-lesion classification for clinical decision support (research use, not a diagnosis).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.command("train")(train_command)
app.add_typer(ensemble_app, name="ensemble")
app.command("calibrate")(calibrate_command)
app.command("evaluate")(evaluate_command)
app.add_typer(explain_app, name="explain")
app.command("compare")(compare_command)
app.add_typer(export_app, name="export")
app.command("predict")(predict_command)
app.command("demo")(demo_command)
app.add_typer(audit_app, name="audit")
app.add_typer(recipe_app, name="recipe")
app.command("serve")(serve_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(show_path=False, rich_tracebacks=False)
    handler.addFilter(lambda record: "litlogger" not in record.getMessage())  # Lightning's advert
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
