"""Validation of the images, masks and pixel spacings the ABCDE tools accept."""

from __future__ import annotations

import math

import numpy as np


def check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an RGB image: numpy ``uint8`` array of shape (H, W, 3) with H, W >= 16."""
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"The '{name}' parameter must be a numpy array (H, W, 3) of uint8. Got {type(image).__name__} instead."
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"The '{name}' parameter must have shape (H, W, 3) (RGB). Got shape {image.shape} instead.")
    if image.dtype != np.uint8:
        raise ValueError(f"The '{name}' parameter must have dtype uint8 (0-255 RGB). Got dtype {image.dtype} instead.")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"The '{name}' parameter must be at least 16 x 16 pixels. Got shape {image.shape} instead.")
    return image


def check_mask(mask: np.ndarray, shape: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Validate a lesion mask: a 2-D array of the image's (H, W), non-empty; returned as bool."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(
            f"The '{name}' parameter must have the image's shape {tuple(shape)}. Got {mask.shape} instead."
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"The '{name}' parameter must be boolean (or 0/1). Got values other than 0 and 1.")
        mask = mask.astype(bool)
    if mask.sum() < 3:
        raise ValueError(
            f"The '{name}' parameter is empty: it must mark at least 3 lesion pixels. Got {int(mask.sum())}."
        )
    return mask


def check_spacing(pixel_spacing_mm: float | None) -> float | None:
    """Validate a pixel spacing: None (unknown) or a finite number of millimetres > 0."""
    if pixel_spacing_mm is None:
        return None
    try:
        value = float(pixel_spacing_mm)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            "The 'pixel_spacing_mm' parameter must be a positive number of millimetres per pixel (or None "
            f"when unknown). Got {pixel_spacing_mm!r} instead."
        )
    return value
