"""Dataset readers: HAM10000, ISIC 2018 Task 3, ISIC 2019, DermaMNIST and class folders.

Every reader returns a :class:`~skinlesion.data.table.LesionTable`; :func:`load_dataset` picks one
by format name. ``datasets`` holds the CSV readers and the format table, ``_folder`` and ``_npz``
the folder and DermaMNIST readers, ``_checks`` the shared problem collection and file checks, and
``_build`` the typed table every reader ends with.
"""

from skinlesion.data.readers._folder import walk_images
from skinlesion.data.readers.datasets import (
    FORMATS,
    load_dataset,
    read_dermamnist,
    read_folder,
    read_ham10000,
    read_isic2018,
    read_isic2019,
)

__all__ = [
    "FORMATS",
    "load_dataset",
    "read_dermamnist",
    "read_folder",
    "read_ham10000",
    "read_isic2018",
    "read_isic2019",
    "walk_images",
]
