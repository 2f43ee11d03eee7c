"""Writing a synthetic dataset in the HAM10000 layout, with a per-image ground-truth table."""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from skinlesion import _csv
from skinlesion.classes import CANONICAL, ISIC2018_CLASSES
from skinlesion.data.synthetic._recipes import check_size, sample_spec, supported_label
from skinlesion.data.synthetic._render import render_lesion, vary_spec

logger = logging.getLogger(__name__)

#: Canonical class -> HAM10000 ``dx`` value.
HAM_DX: dict[str, str] = {
    "MEL": "mel",
    "NV": "nv",
    "BCC": "bcc",
    "AKIEC": "akiec",
    "BKL": "bkl",
    "DF": "df",
    "VASC": "vasc",
}
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot", "neck", "scalp")
# Site frequencies by class over _SITES, rounded from the HAM10000 metadata (other sites left out).
_SITE_WEIGHTS = {
    "MEL": (0.30, 0.18, 0.04, 0.19, 0.06, 0.09, 0.07, 0.02, 0.03, 0.02),
    "NV": (0.22, 0.24, 0.19, 0.10, 0.14, 0.02, 0.03, 0.04, 0.01, 0.01),
    "BCC": (0.38, 0.11, 0.01, 0.10, 0.03, 0.19, 0.09, 0.01, 0.03, 0.05),
    "AKIEC": (0.09, 0.21, 0.01, 0.20, 0.02, 0.36, 0.04, 0.01, 0.03, 0.03),
    "BKL": (0.19, 0.15, 0.06, 0.11, 0.04, 0.32, 0.07, 0.01, 0.03, 0.02),
    "DF": (0.02, 0.67, 0.01, 0.24, 0.04, 0.01, 0.005, 0.0, 0.0, 0.005),
    "VASC": (0.16, 0.20, 0.22, 0.09, 0.19, 0.05, 0.05, 0.01, 0.02, 0.01),
}
# Share of men by class, rounded from the HAM10000 metadata.
_MALE = {"MEL": 0.63, "NV": 0.51, "BCC": 0.62, "AKIEC": 0.68, "BKL": 0.57, "DF": 0.57, "VASC": 0.55}
# Probability that age, sex or site is missing (written as HAM10000 does: empty age, "unknown").
_MISSING = 0.03
# (mean, sd) of age by class, roughly as in HAM10000
_AGE = {
    "MEL": (62, 15),
    "NV": (46, 16),
    "BCC": (66, 12),
    "AKIEC": (67, 11),
    "BKL": (64, 13),
    "DF": (52, 14),
    "VASC": (52, 20),
}
_ID = re.compile(r"^SYN_\d{7}$")


def _lesion_counts(n_lesions_per_class: Mapping[str, int] | int, classes: tuple[str, ...]) -> dict[str, int]:
    if isinstance(n_lesions_per_class, Mapping):
        counts = {}
        for name, n in n_lesions_per_class.items():
            canon = supported_label(name)
            if canon not in classes:
                raise ValueError(
                    f"The 'n_lesions_per_class' parameter names class {name!r}, which is not in 'classes' {classes}."
                )
            counts[canon] = n
    else:
        counts = {c: n_lesions_per_class for c in classes}
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(
                f"The 'n_lesions_per_class' parameter must give non-negative integers. Got {n!r} for {name!r} instead."
            )
    if sum(counts.values()) == 0:
        raise ValueError(f"The 'n_lesions_per_class' parameter asks for no lesion at all. Got {n_lesions_per_class!r}.")
    return {c: int(counts.get(c, 0)) for c in classes}


def _check_args(images_per_lesion: Sequence[int], probs: dict[str, float]) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in images_per_lesion)
    except (TypeError, ValueError):
        lo, hi = 0, -1
    if not 1 <= lo <= hi or (lo, hi) != tuple(images_per_lesion):
        raise ValueError(
            "The 'images_per_lesion' parameter must be (min, max) integers with 1 <= min <= max. "
            f"Got {images_per_lesion!r} instead."
        )
    for name, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"The '{name}' parameter must be a probability in [0, 1]. Got {p!r} instead.")
    return lo, hi


def _remove_previous(root: Path) -> None:
    """Delete the images a previous run listed in ``synthetic_truth.csv`` (and nothing else)."""
    old = root / "synthetic_truth.csv"
    if not old.is_file():
        return
    with open(old, newline="") as f:
        ids = [row.get("image_id", "") for row in csv.DictReader(f)]
    for image_id in filter(_ID.match, ids):
        (root / "images" / f"{image_id}.jpg").unlink(missing_ok=True)
        (root / "masks" / f"{image_id}_segmentation.png").unlink(missing_ok=True)
    logger.info("Replaced a previous synthetic dataset in %s (%d images).", root, len(ids))


def write_synthetic_dataset(
    root: str | Path,
    *,
    n_lesions_per_class: Mapping[str, int] | int,
    classes: Sequence[str] = ISIC2018_CLASSES,
    images_per_lesion: tuple[int, int] = (1, 3),
    size: tuple[int, int] = (150, 200),
    seed: int = 0,
    hair_prob: float = 0.3,
    vignette_prob: float = 0.3,
    ruler_prob: float = 0.1,
    write_masks: bool = False,
) -> Path:
    """Write a HAM10000-style synthetic dataset under ``root`` and return ``root``.

    Files: ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,dx_type,age,sex,localization``, HAM
    ``dx`` names, ``dx_type`` = ``synthetic``; age, sex and site drawn per class with HAM10000-like
    frequencies, each missing with probability 0.03 as HAM10000 writes it: empty age, ``unknown``), ``images/SYN_xxxxxxx.jpg`` (JPEG quality 95) and
    ``synthetic_truth.csv`` (one row per image: the :class:`LesionTruth` fields and the mask's
    bounding box ``top,bottom,left,right`` as inclusive pixel indices); with ``write_masks`` also
    ``masks/SYN_xxxxxxx_segmentation.png`` (ISIC 2018 Task 1 naming, 0/255).

    Each lesion gets ``images_per_lesion`` (min, max, inclusive) images that are views of the same
    lesion (rotation, mirror, shift, brightness, other hair), so splits must be by lesion. Hair and
    vignette are drawn per lesion with the given probabilities, ruler marks per image. Image ids are
    shuffled so they do not reveal the class. Lesion ``i`` of a class is the same for the same
    ``seed`` whatever the other counts are. Images a previous call listed under ``root`` are removed.
    """
    root = Path(root)
    classes = tuple(supported_label(c) for c in classes)
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"The 'classes' parameter must list distinct classes. Got {classes!r} instead.")
    counts = _lesion_counts(n_lesions_per_class, classes)
    probs = {"hair_prob": hair_prob, "vignette_prob": vignette_prob, "ruler_prob": ruler_prob}
    lo, hi = _check_args(images_per_lesion, probs)
    size = check_size(size)
    if root.exists() and not root.is_dir():
        raise ValueError(f"The 'root' parameter must be a folder. Got the file {root} instead.")
    (root / "images").mkdir(parents=True, exist_ok=True)
    _remove_previous(root)
    if write_masks:
        (root / "masks").mkdir(exist_ok=True)

    plans = []  # (class, lesion index within class)
    for cls in classes:
        plans += [(cls, i) for i in range(counts[cls])]
    meta_rows, truth_rows = [], []
    n_images = 0
    renders = []
    for lesion_no, (cls, i) in enumerate(plans):
        rng = np.random.default_rng([int(seed), CANONICAL.index(cls), i])
        base = sample_spec(cls, rng, size=size)
        mean, sd = _AGE[cls]
        sites = np.asarray(_SITE_WEIGHTS[cls])
        person: dict[str, object] = dict(
            lesion_id=f"SYNL_{lesion_no + 1:07d}",
            dx=HAM_DX[cls],
            dx_type="synthetic",
            age=float(np.clip(5 * np.rint(rng.normal(mean, sd) / 5), 5, 85)),
            sex=str(rng.choice(["male", "female"], p=[_MALE[cls], 1 - _MALE[cls]])),
            localization=str(rng.choice(_SITES, p=sites / sites.sum())),
        )
        # a separate stream, so the images are the same as without missing values
        hidden = np.random.default_rng([int(seed), CANONICAL.index(cls), i, 1]).random(3) < _MISSING
        for key, blank, hide in zip(("age", "sex", "localization"), ("", "unknown", "unknown"), hidden, strict=True):
            if hide:
                person[key] = blank
        hair, vignette = bool(rng.random() < hair_prob), bool(rng.random() < vignette_prob)
        for k in range(int(rng.integers(lo, hi + 1))):
            spec = base if k == 0 else vary_spec(base, rng, size=size)
            ruler, brightness = bool(rng.random() < ruler_prob), float(rng.uniform(0.92, 1.08))
            renders.append((person, spec, hair, vignette, ruler, brightness, int(rng.integers(2**31))))
            n_images += 1
    ids = np.random.default_rng([int(seed), 999_999]).permutation(n_images)
    for n, (person, spec, hair, vignette, ruler, brightness, render_seed) in enumerate(renders):
        image_id = f"SYN_{int(ids[n]):07d}"
        image, mask, truth = render_lesion(
            spec, render_seed, size=size, hair=hair, vignette=vignette, ruler=ruler, brightness=brightness
        )
        Image.fromarray(image).save(root / "images" / f"{image_id}.jpg", quality=95)
        if write_masks:
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{image_id}_segmentation.png")
        rows, cols = np.nonzero(mask)
        meta_rows.append({**person, "image_id": image_id})
        box = {"top": int(rows.min()), "bottom": int(rows.max()), "left": int(cols.min()), "right": int(cols.max())}
        truth_rows.append({"image_id": image_id, "lesion_id": person["lesion_id"], **truth.to_dict(), **box})
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = _csv.DictWriter(f, fieldnames=list(METADATA_COLUMNS))
        writer.writeheader()
        writer.writerows(meta_rows)
    with open(root / "synthetic_truth.csv", "w", newline="") as f:
        writer = _csv.DictWriter(f, fieldnames=list(truth_rows[0]))
        writer.writeheader()
        writer.writerows(truth_rows)
    logger.info("Wrote %d synthetic images of %d lesions to %s.", n_images, len(plans), root)
    return root
