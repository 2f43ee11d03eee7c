"""PyTorch dataset over a :class:`~skinlesion.data.table.LesionTable`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import to_chw_tensor


class LesionDataset(Dataset):
    """Items are ``(image, label, row)``: a normalised (3, H, W) float tensor, the class index and the
    row number in the table (so predictions can be matched to image ids, also under DDP padding)."""

    def __init__(self, table: LesionTable, transform: Callable[..., dict]) -> None:
        self.table = table
        self.transform = transform
        self._labels = table.labels()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = self.table.load_image(i)
        out = self.transform(image=image)["image"]
        return to_chw_tensor(np.asarray(out, dtype=np.float32)), int(self._labels[i]), i
