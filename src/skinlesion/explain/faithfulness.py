"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk et al., BMVC 2018, RISE).

Deletion removes pixels in decreasing saliency order and tracks the explained class's probability:
a faithful map makes it fall fast (low area under the curve). Insertion starts from a baseline
image and puts the most salient pixels back first: a faithful map makes the probability rise fast
(high area). Both are compared with random maps of the same image, since the absolute numbers
depend on the model and the baseline. ``mass_in_mask`` measures how much of a map falls inside
the lesion, against the lesion's area fraction (what a uniform map would give).

Curves are evaluated in the tensor space given (usually the normalised model input): the ``"zero"``
baseline is zero there (for ImageNet-normalised inputs the dataset mean colour, not black),
``"mean"`` the image's per-channel mean and ``"blur"`` a Gaussian blur of the image (RISE's
insertion baseline).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from skinlesion.metrics.bootstrap import bootstrap_difference_ci

PredictFn = Callable[[torch.Tensor], Any]
BASELINES: tuple[str, ...] = ("blur", "zero", "mean")
RANDOM_KINDS: tuple[str, ...] = ("uniform", "shuffle", "smooth")


def model_predict_fn(model: torch.nn.Module, temperature: float = 1.0) -> PredictFn:
    """``(B, C, h, w) -> (B, K)`` softmax probabilities of ``model(x) / temperature`` (eval mode)."""
    model.eval()
    device = next(model.parameters()).device

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(x.to(device)).float() / temperature, dim=-1)

    return predict


def _check_choice(parameter: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"The '{parameter}' parameter must be one of {set(choices)}. Got {value!r} instead.")
    return value


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"The 'steps' parameter must be a positive integer. Got {steps!r} instead.")
    return steps


def _check_image(image: Any) -> torch.Tensor:
    t = torch.as_tensor(image).float()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3:
        raise ValueError(f"The 'image' parameter must be a tensor (C, h, w) or (1, C, h, w). Got {tuple(t.shape)}.")
    return t


def _check_map(saliency: Any, size: tuple[int, int] | None = None, name: str = "saliency") -> np.ndarray:
    """A finite 2-D float map, bilinearly resized to ``size`` (h, w) when it differs."""
    s = np.asarray(saliency.detach().cpu() if isinstance(saliency, torch.Tensor) else saliency, dtype=np.float32)
    if s.ndim != 2 or s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"The '{name}' parameter must be a finite 2-D map (h, w). Got shape {s.shape} instead.")
    if size is not None and s.shape != tuple(size):
        t = torch.from_numpy(s)[None, None]
        s = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return s


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(image)
    c = image.shape[0]
    x = F.pad(image[None], (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def baseline_image(image: torch.Tensor, baseline: str = "blur", blur_sigma: float | None = None) -> torch.Tensor:
    """The image with all information removed: Gaussian blur (sigma ``max(h, w) / 10`` by default),
    zeros, or the per-channel mean. ``image`` is ``(C, h, w)``."""
    _check_choice("baseline", baseline, BASELINES)
    if baseline == "zero":
        return torch.zeros_like(image)
    if baseline == "mean":
        return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
    sigma = max(image.shape[-2:]) / 10 if blur_sigma is None else float(blur_sigma)
    if not sigma > 0:
        raise ValueError(f"The 'blur_sigma' parameter must be positive. Got {blur_sigma!r} instead.")
    return _gaussian_blur(image, sigma)


def _auc(curve: np.ndarray) -> np.ndarray:
    """Trapezoidal area over the fraction of pixels [0, 1], along the last axis."""
    return (curve[..., 1:] + curve[..., :-1]).sum(axis=-1) / (2 * (curve.shape[-1] - 1))


def _curves(
    predict_fn: PredictFn,
    image: torch.Tensor,
    maps: np.ndarray,
    class_index: int,
    steps: int,
    baseline: str,
    blur_sigma: float | None,
    seed: int,
    batch_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves ``(M, steps + 1)`` of maps ``(M, h, w)``, in one batch by default.

    The first and last points of every curve are the intact image and the baseline, the same for
    all maps: they are scored once (``2 + 2 * M * (steps - 1)`` images in all)."""
    m, (h, w) = maps.shape[0], image.shape[-2:]
    n = h * w
    tie_break = np.random.default_rng(seed).permutation(n)
    rank = np.empty((m, n), dtype=np.int64)
    for i in range(m):  # order: decreasing saliency, ties in a seeded random order (not raster order)
        rank[i, np.lexsort((tie_break, -maps[i].reshape(-1)))] = np.arange(n)
    counts = np.round(np.linspace(0, n, steps + 1)).astype(np.int64)
    inner = counts[1:-1]  # the end points are the image and the baseline for every map: scored once
    removed = torch.from_numpy(rank[:, None, :] < inner[None, :, None]).view(m * inner.size, 1, h, w)
    removed = removed.to(image.device)
    base = baseline_image(image, baseline, blur_sigma)
    deletion = torch.where(removed, base, image)
    insertion = torch.where(removed, image, base)
    batch = torch.cat([image[None], base[None], deletion, insertion])
    size = batch.shape[0] if batch_size is None else batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"The 'batch_size' parameter must be None or a positive integer. Got {batch_size!r}.")
    outs = []
    with torch.no_grad():
        for start in range(0, batch.shape[0], size):
            p = predict_fn(batch[start : start + size])
            p = np.asarray(p.detach().float().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64)
            if p.ndim != 2 or p.shape[0] != min(size, batch.shape[0] - start):
                raise ValueError(f"predict_fn must return probabilities (B, K) for B images. Got shape {p.shape}.")
            if not 0 <= class_index < p.shape[1]:
                raise ValueError(
                    f"The 'class_index' parameter must be in [0, K) with K = {p.shape[1]} classes. "
                    f"Got {class_index!r} instead."
                )
            outs.append(p[:, class_index])
    flat = np.concatenate(outs)
    full, empty, middle = flat[0], flat[1], flat[2:].reshape(2, m, inner.size)
    dele = np.concatenate([np.full((m, 1), full), middle[0], np.full((m, 1), empty)], axis=1)
    ins = np.concatenate([np.full((m, 1), empty), middle[1], np.full((m, 1), full)], axis=1)
    return dele, ins


def _check_class(class_index: Any) -> int:
    if isinstance(class_index, (bool, np.bool_)) or not isinstance(class_index, (int, np.integer)):
        raise ValueError(f"The 'class_index' parameter must be an integer. Got {class_index!r} instead.")
    return int(class_index)


def deletion_insertion(
    predict_fn: PredictFn,
    image: torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    class_index: int,
    steps: int = 20,
    baseline: str = "blur",
    *,
    blur_sigma: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Deletion and insertion curves and their areas (Petsiuk et al. 2018).

    Args:
        predict_fn: maps a batch ``(B, C, h, w)`` to class probabilities ``(B, K)``.
        image: the model input ``(C, h, w)`` (or ``(1, C, h, w)``).
        saliency: a map ``(h', w')``, resized bilinearly to ``(h, w)`` if it differs.
        class_index: the class whose probability is tracked.
        steps: the pixels go in ``steps`` equal steps; curves have ``steps + 1`` points (0 to all).
        baseline: ``"blur"``, ``"zero"`` or ``"mean"`` (see module doc).
        blur_sigma: Gaussian sigma in pixels of the blur baseline (default ``max(h, w) / 10``).
        seed: order of pixels of equal saliency (deterministic for a seed).
        batch_size: ``None`` evaluates all ``2 * (steps + 1)`` images in one batch.

    Returns:
        ``deletion_curve``, ``insertion_curve`` (float arrays ``(steps + 1,)``), ``deletion_auc``
        (lower = more faithful), ``insertion_auc`` (higher = more faithful), over pixel fraction [0, 1].
    """
    _check_steps(steps)
    _check_choice("baseline", baseline, BASELINES)
    class_index = _check_class(class_index)
    image = _check_image(image)
    s = _check_map(saliency, tuple(image.shape[-2:]))
    dele, ins = _curves(predict_fn, image, s[None], class_index, steps, baseline, blur_sigma, seed, batch_size)
    return {
        "deletion_curve": dele[0],
        "insertion_curve": ins[0],
        "deletion_auc": float(_auc(dele[0])),
        "insertion_auc": float(_auc(ins[0])),
    }


def random_maps(
    saliency: np.ndarray, n_random: int = 5, seed: int = 0, kind: str = "uniform", grid: int = 7
) -> np.ndarray:
    """``n_random`` random maps ``(n_random, h, w)`` of a map's shape.

    ``"uniform"``: i.i.d. uniform noise per pixel; ``"shuffle"``: the map's values permuted (same
    value histogram); ``"smooth"``: uniform noise on a ``grid`` x ``grid`` lattice upsampled
    bilinearly, as blob-like as a CAM from a 7x7 feature map (a harder control than pixel noise).
    """
    _check_choice("kind", kind, RANDOM_KINDS)
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise ValueError(f"The 'n_random' parameter must be a positive integer. Got {n_random!r} instead.")
    s = _check_map(saliency)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n_random, *s.shape)).astype(np.float32)
    if kind == "shuffle":
        return np.stack([rng.permutation(s.reshape(-1)).reshape(s.shape) for _ in range(n_random)])
    coarse = torch.from_numpy(rng.random((n_random, 1, grid, grid)).astype(np.float32))
    return F.interpolate(coarse, size=s.shape, mode="bilinear", align_corners=False)[:, 0].numpy()


def random_baseline(
    predict_fn: PredictFn,
    image: torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    class_index: int,
    steps: int = 20,
    baseline: str = "blur",
    *,
    n_random: int = 5,
    seed: int = 0,
    kind: str = "uniform",
    blur_sigma: float | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Deletion/insertion of ``n_random`` random maps (:func:`random_maps`) of the same image.

    The reference a saliency map must beat (Petsiuk et al. 2018). Random maps are drawn at the
    image's size (``"shuffle"``: at the saliency's own size, then resized). Returns the mean curves
    and mean areas under the keys of :func:`deletion_insertion`, plus the per-map areas
    ``deletion_aucs`` and ``insertion_aucs`` ``(n_random,)``.
    """
    _check_steps(steps)
    _check_choice("baseline", baseline, BASELINES)
    class_index = _check_class(class_index)
    image = _check_image(image)
    size = tuple(image.shape[-2:])
    s = _check_map(saliency)
    source = s if kind == "shuffle" else np.zeros(size, dtype=np.float32)
    maps = random_maps(source, n_random, seed, kind)
    maps = np.stack([_check_map(mp, size) for mp in maps])
    dele, ins = _curves(predict_fn, image, maps, class_index, steps, baseline, blur_sigma, seed, batch_size)
    d_auc, i_auc = _auc(dele), _auc(ins)
    return {
        "deletion_curve": dele.mean(axis=0),
        "insertion_curve": ins.mean(axis=0),
        "deletion_auc": float(d_auc.mean()),
        "insertion_auc": float(i_auc.mean()),
        "deletion_aucs": d_auc,
        "insertion_aucs": i_auc,
    }


def _mask_at(mask: Any, size: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"The 'mask' parameter must be a 2-D lesion mask (H, W). Got shape {m.shape} instead.")
    t = torch.from_numpy((m != 0).astype(np.float32))[None, None]
    return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5


def mask_fraction(mask: Any, size: tuple[int, int] | None = None) -> float:
    """Fraction of the frame inside the lesion (what a uniform map puts in it), at ``size`` if given."""
    m = np.asarray(mask) if size is None else _mask_at(mask, size)
    return float(np.mean(m != 0))


def mass_in_mask(saliency: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> float:
    """Fraction of the map's (non-negative) mass inside the lesion ``mask`` (non-zero = lesion).

    The mask is resized to the map's size with nearest neighbour. A map with no mass warns and
    gives NaN. Compare with :func:`mask_fraction`, the value of a uniform map.
    """
    s = np.clip(_check_map(saliency), 0.0, None)
    m = _mask_at(mask, s.shape)
    total = float(s.sum())
    if total <= 0:
        warnings.warn("mass_in_mask: the saliency map has no mass; returning NaN.", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(s[m].sum() / total)


def evaluate_saliency(
    predict_fn: PredictFn,
    image: torch.Tensor,
    saliency: np.ndarray | torch.Tensor,
    class_index: int,
    mask: np.ndarray | None = None,
    steps: int = 20,
    baseline: str = "blur",
    *,
    n_random: int = 5,
    seed: int = 0,
    kind: str = "uniform",
    batch_size: int | None = None,
) -> dict[str, float]:
    """One image's record for :func:`faithfulness_summary`: the map's and random maps' areas, and,
    with a lesion ``mask``, ``mass_in_mask`` and ``mask_fraction`` at the map's size."""
    kw = {"steps": steps, "baseline": baseline, "seed": seed, "batch_size": batch_size}
    own = deletion_insertion(predict_fn, image, saliency, class_index, **kw)
    rnd = random_baseline(predict_fn, image, saliency, class_index, n_random=n_random, kind=kind, **kw)
    record = {
        "deletion_auc": own["deletion_auc"],
        "insertion_auc": own["insertion_auc"],
        "random_deletion_auc": rnd["deletion_auc"],
        "random_insertion_auc": rnd["insertion_auc"],
    }
    if mask is not None:
        s = _check_map(saliency)
        record["mass_in_mask"] = mass_in_mask(s, mask)
        record["mask_fraction"] = mask_fraction(mask, s.shape)
    return record


def beats_random(key: str, r: Mapping[str, Any]) -> bool:
    """Whether a :func:`_paired` difference beats its reference with the 95% interval excluding 0:
    lower for ``deletion`` (``ci_high < 0``), higher for insertion and the mass in the lesion (``ci_low > 0``)."""
    return r["ci_high"] < 0 if key == "deletion" else r["ci_low"] > 0


def _paired(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int, alpha: float, seed: int) -> dict:
    """Means of ``a`` and ``b``, and of ``a - b`` with a paired cluster-bootstrap CI and Wilcoxon p-value."""
    from scipy.stats import wilcoxon

    ok = np.isfinite(a) & np.isfinite(b)
    a, b, g = a[ok], b[ok], groups[ok]
    out = {"mean": math.nan, "reference": math.nan, "difference": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p_value": math.nan, "n": int(a.size)}
    if a.size == 0:
        warnings.warn("faithfulness_summary: no finite pairs; returning NaN.", RuntimeWarning, stacklevel=3)
        return out
    d = a - b
    out.update(mean=float(a.mean()), reference=float(b.mean()), difference=float(d.mean()))
    ci = bootstrap_difference_ci(a, b, g, np.mean, n_boot=n_boot, alpha=alpha, seed=seed)
    out.update(ci_low=ci["low"], ci_high=ci["high"])
    if a.size >= 2 and np.any(d != 0):
        out["p_value"] = float(wilcoxon(a, b).pvalue)
    return out


def faithfulness_summary(
    records: Sequence[Mapping[str, float]],
    groups: Sequence[Any] | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Aggregate per-image records (:func:`evaluate_saliency`) over a data set.

    For ``deletion`` (lower = more faithful), ``insertion`` (higher = better) and, where records
    have it, ``mass_in_mask``: ``mean`` (the maps), ``reference`` (random maps; for mass, the
    lesion's area fraction, what a uniform map gives), the paired ``difference`` of means with a
    ``1 - alpha`` percentile bootstrap interval (``ci_low``, ``ci_high``; resampling ``groups``,
    e.g. lesion ids, when given, else images) and the two-sided Wilcoxon signed-rank ``p_value``
    (NaN when all differences are zero), and ``n`` finite pairs. Petsiuk et al. 2018.
    """
    records = list(records)
    if not records:
        raise ValueError("The 'records' parameter must hold at least one per-image record. Got none.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"The 'n_boot' parameter must be a positive integer. Got {n_boot!r} instead.")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"The 'alpha' parameter must be in (0, 1). Got {alpha!r} instead.")
    g = np.arange(len(records)) if groups is None else np.asarray(groups, dtype=object).astype(str)
    if g.shape != (len(records),):
        raise ValueError(f"The 'groups' parameter must hold one id per record ({len(records)}). Got {g.shape}.")
    pairs = {
        "deletion": ("deletion_auc", "random_deletion_auc"),
        "insertion": ("insertion_auc", "random_insertion_auc"),
        "mass_in_mask": ("mass_in_mask", "mask_fraction"),
    }
    summary: dict[str, dict[str, float]] = {}
    for name, (key, ref) in pairs.items():
        if name == "mass_in_mask" and not any(key in r for r in records):
            continue
        missing = [i for i, r in enumerate(records) if key not in r or ref not in r]
        if missing:
            raise ValueError(f"Record {missing[0]} lacks {key!r} or {ref!r}: every record needs both.")
        a = np.asarray([r[key] for r in records], dtype=np.float64)
        b = np.asarray([r[ref] for r in records], dtype=np.float64)
        summary[name] = _paired(a, b, g, n_boot, alpha, seed)
    return summary
