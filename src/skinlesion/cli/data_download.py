"""``skinlesion data download``: fetch, verify and unpack HAM10000 / ISIC 2018 / ISIC 2019."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from skinlesion.data.download import (
    DATASETS,
    ENV_BASE_URL,
    LAYOUT,
    download_dataset,
    get_spec,
    read_record,
    source_sets,
)
from skinlesion.errors import SkinLesionError

_HELP = f"""Download DATASET ({", ".join(DATASETS)}), verify and unpack it.

Sources are the official ones (see --list). An interrupted download resumes
when the command is run again. Offline: fetch the listed files elsewhere,
copy them into one folder and pass --from-dir.

\b
{LAYOUT}"""


def _list(dataset: str, split: str, console: Console) -> None:
    for s in [split] if split != "all" else ["train", "val", "test"]:
        try:
            sets = source_sets(dataset, s)
        except SkinLesionError:
            if split == "all":
                continue
            raise
        for cand in sets:
            console.print(f"[bold]{dataset} ({s}) from {cand.name}[/bold]: {escape(cand.note)}", soft_wrap=True)
            for f in cand.files:
                pinned = f"sha256 {f.sha256}" if f.sha256 else "sha256 not pinned"
                console.print(f"  {f.filename}  {escape(f.url or f.page or '')}  ({pinned})", soft_wrap=True)


def download_command(
    dataset: Annotated[str, typer.Argument(help=f"One of: {', '.join(DATASETS)}.", show_default=False)],
    dest: Annotated[
        Path | None, typer.Option("--dest", "-d", help="Dataset root to create. Default: data/DATASET.")
    ] = None,
    split: Annotated[str, typer.Option("--split", "-s", help="train, val, test or all.")] = "train",
    from_dir: Annotated[
        Path | None,
        typer.Option("--from-dir", help="Folder holding the source files already (offline machines)."),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", envvar=ENV_BASE_URL, help="Replace the host of every URL (a mirror)."),
    ] = None,
    keep_archives: Annotated[bool, typer.Option("--keep-archives", help="Keep the archives once unpacked.")] = False,
    list_only: Annotated[bool, typer.Option("--list", help="List the source files and exit.")] = False,
) -> None:
    console = Console()
    err = Console(stderr=True)
    root = dest if dest is not None else Path("data") / dataset.strip().lower()
    bars = _Bars(err)
    try:
        get_spec(dataset)
        if list_only:
            _list(dataset, split, console)
            return
        with _log_to(err):
            download_dataset(
                dataset,
                root,
                split=split,
                from_dir=from_dir,
                base_url=base_url,
                progress=bars,
                keep_archives=keep_archives,
            )
    except SkinLesionError as exc:
        bars.stop()
        err.print(f"[red]Error: {escape(str(exc))}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        bars.stop()
        err.print("[red]Interrupted; run the same command again to resume.[/red]", soft_wrap=True)
        raise typer.Exit(130) from None
    bars.stop()
    entries = read_record(root).get("datasets", {}).get(dataset.strip().lower(), {})
    for key, entry in entries.items():
        files = entry.get("files", [])
        unpinned = sum(not f.get("pinned") for f in files)
        note = f"; {unpinned} of {len(files)} files checked against no pinned sha256 (see CHECKSUMS.sha256)"
        console.print(
            f"[green]{dataset} ({key}): {entry.get('images')} images in {escape(str(root))}[/green]"
            + (f"[yellow]{note}[/yellow]" if unpinned else ""),
            soft_wrap=True,
        )


class _Bars:
    """Progress callback that opens rich progress bars on the first byte (so errors print cleanly)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total)
        self.bar.update(self.tasks[name], completed=done, total=total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextlib.contextmanager
def _log_to(console: Console) -> Iterator[None]:
    """Show the library's log messages through rich unless the application configured logging."""
    logger = logging.getLogger("skinlesion")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


download_command.__doc__ = _HELP
