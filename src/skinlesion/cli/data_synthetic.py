"""``skinlesion data synthetic``: procedural dermoscopy-like lesions with known truth (no patient data)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from skinlesion.cli._common import console, user_errors


def synthetic_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (HAM10000 layout: metadata CSV + images/)."),
    lesions_per_class: int = typer.Option(2, "--lesions-per-class", min=1, help="Lesions per class (1-3 images each)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same images."),
    masks: bool = typer.Option(False, "--masks", help="Also write the true lesion masks (masks/)."),
) -> None:
    """Write synthetic lesions of the seven HAM10000 classes: sample inputs for predict and serve, and test data."""
    from skinlesion.data.synthetic import write_synthetic_dataset

    with user_errors():
        root = write_synthetic_dataset(out, n_lesions_per_class=lesions_per_class, seed=seed, write_masks=masks)
    n = len(list((root / "images").glob("*.jpg")))
    console.print(f"{n} synthetic images in {escape(str(root / 'images'))} (metadata: HAM10000_metadata.csv)", highlight=False)
