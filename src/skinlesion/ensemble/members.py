"""An ensemble member: one trained backbone with its own preprocessing, weight and temperature."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from skinlesion.data.transforms import images_to_batch, preprocessing_transform


@dataclass
class Member:
    """A model in eval mode plus everything needed to feed it and weigh its output.

    ``preprocessing`` is the checkpoint's dict (``input_size`` (H, W), ``mean``, ``std``,
    ``interpolation``); ``temperature`` divides the member's logits before softmax.
    """

    name: str
    model: torch.nn.Module
    preprocessing: dict[str, Any]
    backbone: str
    weight: float = 1.0
    temperature: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.preprocessing["input_size"]
        return int(h), int(w)

    def transform(self):  # noqa: ANN201 - an albumentations Compose
        return preprocessing_transform(self.preprocessing)

    def preprocess(self, images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
        """RGB uint8 images ``(H, W, 3)`` of any size -> normalised batch ``(N, 3, h, w)`` for this member."""
        if len(images) == 0:
            raise ValueError("The 'images' parameter holds no image.")
        for i, im in enumerate(images):
            a = np.asarray(im)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
                raise ValueError(
                    f"images[{i}] must be an RGB uint8 array (H, W, 3). Got dtype {a.dtype} and shape {a.shape} instead."
                )
        return images_to_batch(images, self.transform()).to(device)
