"""Augmentation of whole batches of uint8 image tensors, on whatever device the batch is on.

The per-image pipeline (:mod:`skinlesion.data.transforms`: JPEG decode, albumentations, one worker)
kept a 2-core CPU busy with data instead of the model. Here images are decoded once
(:mod:`skinlesion.data.image_cache`) and every training batch is augmented in one go:

* geometry (random resized crop, dihedral flips, rotation, scale, shear) is one affine matrix per
  image and a single ``grid_sample`` call for the batch (as kornia and DALI do on GPUs);
* colour (brightness, contrast, saturation, hue) is a few vectorised tensor operations;
* normalisation uses the backbone's mean and std, as the eval transform does.

The levels mirror :func:`skinlesion.data.transforms.train_transform` ("none", "light", "medium",
"strong"). Evaluation batches are only resized (bilinear, antialiased) and normalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from skinlesion.data.transforms import AUGMENT_LEVELS

# (crop scale range or None for a plain resize, rotation degrees, colour jitter, strong extras)
_LEVELS: dict[str, tuple[tuple[float, float] | None, float, float, bool]] = {
    "none": (None, 0.0, 0.0, False),
    "light": (None, 0.0, 0.1, False),
    "medium": ((0.6, 1.0), 45.0, 0.2, False),
    "strong": ((0.4, 1.0), 45.0, 0.3, True),
}
# RGB -> YIQ (NTSC); hue is a rotation of the I/Q plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = (0.299, 0.587, 0.114)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device="cpu").to(device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=g, device="cpu") < p).to(device)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float ``[0, 1]`` batch -> ``(x - mean) / std`` per channel."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def eval_batch(images: torch.Tensor, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> float normalised ``(N, 3, h, w)``: whole-image resize, no crop."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"The 'images' parameter must be a uint8 (N, 3, H, W) tensor. Got {images.dtype} {tuple(images.shape)}.")
    x = images.float().div_(255.0)
    h, w = int(input_size[0]), int(input_size[1])
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return normalise(x, mean, std)


def affine_matrices(
    n: int, level: str, aspect: float, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(n, 2, 3)`` matrices mapping output to input coordinates (``affine_grid`` convention).

    ``aspect`` is the output's width / height, so rotations are rotations of the picture (not of the
    normalised square).
    """
    device = torch.device(device)
    scale_range, degrees, _, _ = _LEVELS[level]
    one, zero = torch.ones(n, device=device), torch.zeros(n, device=device)
    # random resized crop: area fraction s, aspect jitter r, centre anywhere the crop fits
    if scale_range is not None:
        s = _uniform(n, *scale_range, generator, device)
        r = torch.exp(_uniform(n, math.log(0.8), math.log(1.25), generator, device))
        cw, ch = torch.sqrt(s * r).clamp(max=1.0), torch.sqrt(s / r).clamp(max=1.0)
        tx = _uniform(n, -1.0, 1.0, generator, device) * (1 - cw)
        ty = _uniform(n, -1.0, 1.0, generator, device) * (1 - ch)
    else:
        cw, ch, tx, ty = one, one, zero, zero
    # flips (the dihedral group's reflections; 90-degree turns need a square input)
    fx = torch.where(_bernoulli(n, 0.5, generator, device), -one, one)
    fy = torch.where(_bernoulli(n, 0.5, generator, device), -one, one)
    # rotation, scale and shear, applied to half the images, in picture (aspect-corrected) coordinates
    if degrees > 0:
        on = _bernoulli(n, 0.5, generator, device)
        theta = torch.where(on, _uniform(n, -degrees, degrees, generator, device), zero) * math.pi / 180
        zoom = torch.where(on, _uniform(n, 0.9, 1.1, generator, device), one)
        shear = torch.where(on, _uniform(n, -5.0, 5.0, generator, device), zero) * math.pi / 180
    else:
        theta, zoom, shear = zero, one, zero
    cos, sin, tan = torch.cos(theta), torch.sin(theta), torch.tan(shear)
    # picture coordinates: u = x * aspect, v = y; M_pic = R(theta) @ Shear / zoom; M = D^-1 M_pic D
    a, b = cos / zoom, (cos * tan - sin) / zoom
    c, d = sin / zoom, (sin * tan + cos) / zoom
    m00, m01 = a, b / aspect
    m10, m11 = c * aspect, d
    mat = torch.stack(
        [
            torch.stack([cw * m00 * fx, cw * m01 * fy, tx], dim=1),
            torch.stack([ch * m10 * fx, ch * m11 * fy, ty], dim=1),
        ],
        dim=1,
    )
    return mat


def _colour_jitter(x: torch.Tensor, jitter: float, g: torch.Generator | None) -> torch.Tensor:
    """Brightness, contrast, saturation (factors in ``1 ± jitter``) and hue (``± jitter / 4`` turns),
    each image with probability 0.8, as ``A.ColorJitter(p=0.8)``."""
    n, dev = x.shape[0], x.device
    on = _bernoulli(n, 0.8, g, dev).view(n, 1, 1, 1)
    shape = (n, 1, 1, 1)
    bright = _uniform(n, 1 - jitter, 1 + jitter, g, dev).view(shape)
    contrast = _uniform(n, 1 - jitter, 1 + jitter, g, dev).view(shape)
    sat = _uniform(n, 1 - jitter, 1 + jitter, g, dev).view(shape)
    hue = _uniform(n, -jitter / 4, jitter / 4, g, dev) * 2 * math.pi
    gray_w = torch.tensor(_GRAY, dtype=x.dtype, device=dev).view(1, 3, 1, 1)
    y = x * bright
    mean = (y * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = (y - mean) * contrast + mean
    gray = (y * gray_w).sum(1, keepdim=True)
    y = (y - gray) * sat + gray
    # hue: RGB -> YIQ, rotate (I, Q), back; one 3x3 matrix per image
    yiq = _YIQ.to(device=dev, dtype=x.dtype)
    cos, sin = torch.cos(hue), torch.sin(hue)
    rot = torch.zeros(n, 3, 3, dtype=x.dtype, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = torch.linalg.inv(yiq) @ rot @ yiq  # (n, 3, 3)
    y = torch.einsum("nij,njhw->nihw", m, y)
    y = y.clamp_(0.0, 1.0)
    return torch.where(on, y, x)


def _strong_extras(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise on 30% of the images and one to three erased boxes on 30% ("strong")."""
    n, _, h, w = x.shape
    dev = x.device
    noisy = _bernoulli(n, 0.3, g, dev).view(n, 1, 1, 1)
    std = _uniform(n, 0.02, 0.06, g, dev).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g, device="cpu").to(dev) * std
    x = torch.where(noisy, (x + noise).clamp_(0, 1), x)
    erase = _bernoulli(n, 0.3, g, dev)
    for i in torch.nonzero(erase).flatten().tolist():
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            bh = max(1, int(h * float(_uniform(1, 0.05, 0.15, g, torch.device("cpu")))))
            bw = max(1, int(w * float(_uniform(1, 0.05, 0.15, g, torch.device("cpu")))))
            y0 = int(torch.randint(0, h - bh + 1, (1,), generator=g))
            x0 = int(torch.randint(0, w - bw + 1, (1,), generator=g))
            x[i, :, y0 : y0 + bh, x0 : x0 + bw] = 0
    return x


def augment_batch(
    images: torch.Tensor,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    level: str = "medium",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` -> augmented, normalised float ``(N, 3, h, w)`` at ``input_size``."""
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"The 'augment.level' parameter must be one of {AUGMENT_LEVELS}. Got {level!r} instead.")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"The 'images' parameter must be a uint8 (N, 3, H, W) tensor. Got {images.dtype} {tuple(images.shape)}.")
    if level == "none":
        return eval_batch(images, input_size, mean, std)
    h, w = int(input_size[0]), int(input_size[1])
    n = images.shape[0]
    x = images.float().div_(255.0)
    if x.shape[-2] > 2 * h or x.shape[-1] > 2 * w:  # keep bilinear sampling free of aliasing
        x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False, antialias=True)
    theta = affine_matrices(n, level, w / h, generator=generator, device=x.device).to(x.dtype)
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    _, _, jitter, strong = _LEVELS[level]
    if jitter > 0:
        x = _colour_jitter(x, jitter, generator)
    if strong:
        x = _strong_extras(x, generator)
    return normalise(x, mean, std)
