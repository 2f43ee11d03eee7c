"""``skinlesion data split``: read a dataset, make a lesion-disjoint split, write its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from skinlesion.data.readers import FORMATS, load_dataset
from skinlesion.data.splits import (
    SPLITS,
    kfold_keeping_test,
    make_kfold_split,
    make_split,
    read_manifest,
    split_counts,
    write_manifest,
)
from skinlesion.errors import SkinLesionError


def _count_table(counts: pd.DataFrame, title: str) -> Table:
    """Rich table: one row per class, one column per split/fold (count and share of the class)."""
    t = Table(title=title)
    t.add_column("class")
    for c in counts.columns:
        t.add_column(str(c), justify="right")
    t.add_column("total", justify="right")
    for cls, row in counts.iterrows():
        n = int(row.sum())
        t.add_row(str(cls), *(f"{int(v)} ({v / n:.1%})" if n else "0" for v in row), str(n))
    tot = counts.sum(axis=0)
    n = int(tot.sum())
    t.add_row("all", *(f"{int(v)} ({v / n:.1%})" for v in tot), str(n), style="bold")
    return t


def split_command(
    fmt: Annotated[str, typer.Option("--format", help=f"Dataset format: {', '.join(FORMATS)}.")] = "ham10000",
    root: Annotated[
        Path | None, typer.Option("--root", help="Dataset folder (DermaMNIST: the .npz). ISIC: optional with --gt.")
    ] = None,
    gt: Annotated[Path | None, typer.Option("--gt", help="ISIC ground-truth CSV (one-hot).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Image folder (ISIC; HAM10000 override).")] = None,
    metadata: Annotated[
        Path | None, typer.Option("--metadata", help="Metadata CSV with lesion_id (ISIC; HAM10000 override).")
    ] = None,
    val: Annotated[float, typer.Option("--val", help="Validation fraction (images), 0 for none.")] = 0.15,
    test: Annotated[float, typer.Option("--test", help="Test fraction (images).")] = 0.15,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same split.")] = 42,
    kfold: Annotated[
        int | None,
        typer.Option("--kfold", help="Also cut the non-test part into K lesion-disjoint folds (replaces --val)."),
    ] = None,
    keep_test: Annotated[
        Path | None,
        typer.Option("--keep-test", help="With --kfold: take the test rows of this manifest unchanged and fold the rest."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Manifest CSV to write (sidecar: same name, .json).")] = Path(
        "manifest.csv"
    ),
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Leave out bad rows (listed) instead of stopping.")
    ] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Open every image header.")] = True,
) -> None:
    """Split a dataset by lesion (stratified by class, seeded) and write a hashed manifest."""
    console = Console()
    err = Console(stderr=True)
    key = fmt.strip().lower()
    kw: dict[str, Any] = {"on_error": "skip" if skip_bad else "raise"}
    if key != "dermamnist":
        kw["verify_images"] = verify
    if key == "ham10000":
        kw.update(metadata_csv=metadata, images_dir=images)
    elif key in ("isic2018", "isic2019"):
        kw.update(ground_truth_csv=gt, images_dir=images, metadata_csv=metadata)
    elif key == "dermamnist":
        kw["split"] = "all"  # pool the official splits; re-split here
    try:
        if gt is not None and key in FORMATS and key not in ("isic2018", "isic2019"):
            raise typer.BadParameter(f"--gt applies to isic2018/isic2019, not to --format {key}.")
        if (images is not None or metadata is not None) and key in ("folder", "dermamnist"):
            raise typer.BadParameter(f"--images/--metadata do not apply to --format {key}; use --root.")
        table = load_dataset(key, root, **kw)
        if keep_test is not None and kfold is None:
            raise typer.BadParameter("--keep-test needs --kfold K.")
        if kfold is None:
            manifest = make_split(table, val_fraction=val, test_fraction=test, seed=seed)
        elif keep_test is not None:
            manifest = kfold_keeping_test(table, read_manifest(keep_test)[0], k=kfold, seed=seed)
        else:
            manifest = make_kfold_split(table, k=kfold, test_fraction=test, seed=seed)
        digest = write_manifest(manifest, out, info={})
    except (SkinLesionError, ValueError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if table.skipped:
        console.print(f"[yellow]Left out {len(table.skipped)} bad row(s) (--skip-bad):[/]")
        for s in table.skipped[:10]:
            console.print(f"  - {escape(s.describe())}", highlight=False, soft_wrap=True)
        if len(table.skipped) > 10:
            console.print(f"  ... and {len(table.skipped) - 10} more")
    counts = split_counts(manifest, table.classes).reindex(columns=[s for s in SPLITS if s in manifest["split"].values])
    console.print(_count_table(counts, f"{table.source}: images per class and split (seed {seed})"))
    if kfold is not None:
        train = manifest[manifest["fold"] >= 0]
        folds = split_counts(train, table.classes, by="fold")
        folds.columns = [f"fold {f}" for f in folds.columns]
        console.print(_count_table(folds, f"{kfold} folds of the training part"))
    n_groups = manifest["lesion_id"].nunique()
    if table.group_key == "image_id":
        console.print(
            f"Grouped by lesion: [bold red]no[/] ({n_groups} images): no lesion id, so the split is by image and "
            "images of one lesion may sit on both sides."
        )
    else:
        console.print(f"Grouped by lesion: [bold green]yes[/] ({table.group_key}, {n_groups} groups)")
        missing = table.notes.get("rows_without_lesion_id") or 0
        if missing:
            console.print(f"[yellow]{missing} image(s) have no lesion id and are their own group.[/]")
    console.print(f"Manifest: {escape(str(out))} (sidecar {escape(str(out.with_suffix('.json')))})", soft_wrap=True)
    console.print(f"SHA-256: {digest}", highlight=False, soft_wrap=True)
