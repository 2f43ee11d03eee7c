"""``skinlesion data ...``: split, download and synthetic samples."""

from __future__ import annotations

import typer

from skinlesion.cli.data_download import download_command
from skinlesion.cli.data_split import split_command
from skinlesion.cli.data_synthetic import synthetic_command

data_app = typer.Typer(help="Datasets: lesion-disjoint split manifests and official downloads.", no_args_is_help=True)
data_app.command("split")(split_command)
data_app.command("download")(download_command)
data_app.command("synthetic")(synthetic_command)
