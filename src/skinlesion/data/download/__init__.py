"""Download HAM10000, ISIC 2018 Task 3 and ISIC 2019 from their official sources, verify and unpack.

``fetch`` downloads (resuming), verifies and unpacks a dataset and records what it did; ``_sources``
is the registry of official files; ``_http`` is the stdlib HTTP client. See :mod:`.fetch` for the
folder layout each dataset gets.
"""

from skinlesion.data.download.fetch import (
    CHECKSUMS_NAME,
    DATASETS,
    DOWNLOADS_DIR,
    ENV_BASE_URL,
    LAYOUT,
    RECORD_NAME,
    download_dataset,
    get_spec,
    list_sources,
    read_record,
    source_sets,
)

__all__ = [
    "CHECKSUMS_NAME",
    "DATASETS",
    "DOWNLOADS_DIR",
    "ENV_BASE_URL",
    "LAYOUT",
    "RECORD_NAME",
    "download_dataset",
    "get_spec",
    "list_sources",
    "read_record",
    "source_sets",
]
