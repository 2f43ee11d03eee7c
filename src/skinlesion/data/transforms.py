"""Albumentations pipelines whose normalisation comes from the backbone (never hand-copied).

Dermoscopy has no canonical orientation, so the training policy uses the full dihedral group
(flips and 90-degree rotations) plus mild affine, colour and blur changes, as in the ISIC 2018/2019
winning entries (Gessert et al. 2020, "Skin lesion classification using ensembles of multi-resolution
EfficientNets with meta data").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch

AugmentLevel = Literal["none", "light", "medium", "strong"]
AUGMENT_LEVELS: tuple[str, ...] = ("none", "light", "medium", "strong")

_INTERPOLATION = {
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
}


def _interp(name: str) -> int:
    try:
        return _INTERPOLATION[name]
    except KeyError:
        raise ValueError(
            f"The 'interpolation' parameter must be one of {sorted(_INTERPOLATION)}. Got {name!r} instead."
        ) from None


def _to_tensor(image: np.ndarray, **_: object) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _finish(
    ops: list[A.BasicTransform], mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    return A.Compose(ops)


def eval_transform(
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> A.Compose:
    """Resize the whole image to ``input_size`` (H, W) and normalise. No crop: lesions touch borders."""
    h, w = input_size
    return _finish([A.Resize(height=h, width=w, interpolation=_interp(interpolation))], mean, std)


def train_transform(
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    level: str = "medium",
    interpolation: str = "bilinear",
) -> A.Compose:
    """Training augmentation at ``level`` ("none", "light", "medium", "strong")."""
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"The 'augment.level' parameter must be one of {AUGMENT_LEVELS}. Got {level!r} instead.")
    h, w = input_size
    interp = _interp(interpolation)
    if level == "none":
        return eval_transform(input_size, mean, std, interpolation)
    ops: list[A.BasicTransform] = []
    if level == "light":
        ops.append(A.Resize(height=h, width=w, interpolation=interp))
    else:
        scale = (0.6, 1.0) if level == "medium" else (0.4, 1.0)
        ops.append(A.RandomResizedCrop(size=(h, w), scale=scale, ratio=(w / h * 0.8, w / h * 1.25), interpolation=interp))
    ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if h == w:
        ops.append(A.RandomRotate90(p=0.5))
    if level in ("medium", "strong"):
        ops.append(A.Affine(rotate=(-45, 45), scale=(0.9, 1.1), shear=(-5, 5), border_mode=cv2.BORDER_REFLECT_101, p=0.5))
    jitter = {"light": 0.1, "medium": 0.2, "strong": 0.3}[level]
    ops.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter / 4, p=0.8))
    if level == "strong":
        ops += [
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.3),
            A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.3),
        ]
    return _finish(ops, mean, std)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 normalised array -> (3, H, W) tensor."""
    return _to_tensor(image)


def preprocessing_transform(preprocessing: Mapping[str, Any], input_size: Sequence[int] | None = None) -> A.Compose:
    """The eval transform a checkpoint's ``preprocessing`` dict describes (``input_size`` overrides its size)."""
    p = preprocessing
    return eval_transform(tuple(input_size or p["input_size"]), p["mean"], p["std"], p["interpolation"])  # type: ignore[arg-type]


def images_to_batch(images: Sequence[np.ndarray], transform: A.Compose) -> torch.Tensor:
    """RGB uint8 images -> normalised ``(N, 3, h, w)`` batch through ``transform``."""
    return torch.stack([to_chw_tensor(np.asarray(transform(image=np.asarray(im))["image"], dtype=np.float32)) for im in images])
