"""PyTorch dataset over a :class:`~skinlesion.data.table.LesionTable`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from skinlesion.data.table import LesionTable
from skinlesion.data.transforms import to_chw_tensor


def metadata_tensor(metadata: np.ndarray | None, n_rows: int) -> torch.Tensor | None:
    """Encoded metadata ``(n_rows, D)`` as a float32 tensor (None stays None); ValueError on another shape."""
    if metadata is None:
        return None
    meta = np.asarray(metadata, dtype=np.float32)
    if meta.ndim != 2 or meta.shape[0] != n_rows:
        raise ValueError(
            f"The 'metadata' parameter must have one row per table row, shape ({n_rows}, D). Got shape {meta.shape} instead."
        )
    return torch.from_numpy(meta)


class LesionDataset(Dataset):
    """Items are ``(image, label, row)``: a normalised (3, H, W) float tensor, the class index and the
    row number in the table (so predictions can be matched to image ids, also under DDP padding).

    With ``metadata`` (encoded metadata ``(N, D)``, one row per table row, e.g. from
    :meth:`~skinlesion.data.metadata.MetadataEncoder.encode_frame`) items are
    ``(image, label, row, meta)`` with ``meta`` a float32 ``(D,)`` tensor.
    """

    def __init__(self, table: LesionTable, transform: Callable[..., dict], *, metadata: np.ndarray | None = None) -> None:
        self.table = table
        self.transform = transform
        self._labels = table.labels()
        self._meta = metadata_tensor(metadata, len(table))

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | tuple[torch.Tensor, int, int, torch.Tensor]:
        image = self.table.load_image(i)
        out = self.transform(image=image)["image"]
        x = to_chw_tensor(np.asarray(out, dtype=np.float32))
        if self._meta is None:
            return x, int(self._labels[i]), i
        return x, int(self._labels[i]), i, self._meta[i]
