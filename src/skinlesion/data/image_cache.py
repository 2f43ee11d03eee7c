"""Decode a table's images once into one uint8 tensor, and a dataset that serves them from memory.

HAM10000 at 150x200 is 8,511 x 90 kB = 0.77 GB as uint8: decoding it takes seconds, where the
per-image pipeline decoded and augmented every image in every epoch. Items are raw uint8 images;
:mod:`skinlesion.data.batch_augment` augments or resizes whole batches afterwards (on the GPU when
training runs there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from skinlesion.data.loader import metadata_tensor
from skinlesion.data.table import LesionTable

log = logging.getLogger(__name__)
CACHE_SCALE = 1.25  # cached images are this much larger than the network input: room for crops


def cache_size(input_size: Sequence[int], scale: float = CACHE_SCALE) -> tuple[int, int]:
    """(H, W) at which images are cached for a network input of ``input_size`` (H, W)."""
    return int(round(input_size[0] * scale)), int(round(input_size[1] * scale))


def decode_images(table: LesionTable, size: Sequence[int], *, threads: int = 2) -> torch.Tensor:
    """Every image of ``table`` resized (whole image, area interpolation) to ``size`` (H, W):
    a uint8 ``(N, 3, H, W)`` tensor in table order. Raises DataError naming a bad file."""
    h, w = int(size[0]), int(size[1])
    out = torch.empty((len(table), 3, h, w), dtype=torch.uint8)

    def one(i: int) -> None:
        im = table.load_image(i)
        if im.shape[:2] != (h, w):
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
        out[i] = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(one, range(len(table)), chunksize=64):
            pass
    log.info("Decoded %d images to %dx%d in %.1f s (%.0f MB)", len(table), h, w, time.perf_counter() - t0, out.numel() / 1e6)
    return out


class CachedLesionDataset(Dataset):
    """Items ``(image_uint8, label, row)`` or ``(image_uint8, label, row, meta)`` from decoded images,
    the same layout as :class:`~skinlesion.data.loader.LesionDataset` but unnormalised uint8."""

    def __init__(self, table: LesionTable, images: torch.Tensor, *, metadata: np.ndarray | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != len(table):
            raise ValueError(
                f"The 'images' parameter must be a uint8 (N, 3, H, W) tensor with N = {len(table)} rows. "
                f"Got {images.dtype} {tuple(images.shape)} instead."
            )
        self.images = images
        self._labels = torch.as_tensor(table.labels(), dtype=torch.long)
        self._meta = metadata_tensor(metadata, len(table))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        if self._meta is None:
            return self.images[i], self._labels[i], torch.tensor(i)
        return self.images[i], self._labels[i], torch.tensor(i), self._meta[i]
