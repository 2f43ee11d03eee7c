"""Tiny synthetic datasets in the official ISIC 2018 Task 3 and ISIC 2019 file layouts.

The recipes' CPU smoke mode (``skinlesion recipe run NAME --smoke``) runs every step on these, so
the readers see exactly the files ``skinlesion data download`` leaves behind:

* ISIC 2018: ``ISIC2018_Task3_Training_GroundTruth.csv`` (one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``,
  values ``0.0``/``1.0``), ``ISIC2018_Task3_Training_Input/ISIC_xxxxxxx.jpg`` and the
  ``HAM10000_metadata.csv`` that carries the lesion ids (``lesion_id,image_id,dx,dx_type,age,sex,localization``).
* ISIC 2019: ``ISIC_2019_Training_GroundTruth.csv`` (one-hot ``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``,
  the ``UNK`` column all zero as in the official training file), ``ISIC_2019_Training_Metadata.csv``
  (``image,age_approx,anatom_site_general,lesion_id,sex``; one image without a lesion id, as some
  official rows are) and ``ISIC_2019_Training_Input/``; optionally the test files
  ``ISIC_2019_Test_GroundTruth.csv`` (with ``UNK`` images) and ``ISIC_2019_Test_Input/``.

The generator has no SCC or UNK recipe: SCC lesions are drawn from the AKIEC recipe with a redder
hue, UNK lesions from the NV recipe with a blue-grey cast. The images are for exercising the
pipeline, not for learning dermoscopy.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from skinlesion.classes import ISIC2018_CLASSES, ISIC2019_COLUMNS
from skinlesion.data.synthetic._recipes import sample_spec
from skinlesion.data.synthetic._render import render_lesion, vary_spec

ISIC2018_FILES = {
    "ground_truth": "ISIC2018_Task3_Training_GroundTruth.csv",
    "images": "ISIC2018_Task3_Training_Input",
    "metadata": "HAM10000_metadata.csv",
}
ISIC2019_FILES = {
    "ground_truth": "ISIC_2019_Training_GroundTruth.csv",
    "images": "ISIC_2019_Training_Input",
    "metadata": "ISIC_2019_Training_Metadata.csv",
}
ISIC2019_TEST_FILES = {"ground_truth": "ISIC_2019_Test_GroundTruth.csv", "images": "ISIC_2019_Test_Input"}

_RENDER_AS = {"AK": "AKIEC", "SCC": "AKIEC", "UNK": "NV"}
_TINT = {"SCC": (1.12, 0.9, 0.9), "UNK": (0.85, 0.92, 1.12)}
_SITES_2019 = ("anterior torso", "head/neck", "lower extremity", "upper extremity", "posterior torso")
_SITES_HAM = ("back", "face", "lower extremity", "upper extremity", "trunk")


def _render(cls: str, rng: np.random.Generator, size: tuple[int, int], base=None):  # type: ignore[no-untyped-def]
    spec = sample_spec(_RENDER_AS.get(cls, cls), rng, size=size) if base is None else vary_spec(base, rng, size=size)
    image, _, _ = render_lesion(spec, int(rng.integers(2**31)), size=size)
    if cls in _TINT:
        image = np.clip(image.astype(float) * np.asarray(_TINT[cls]), 0, 255).astype(np.uint8)
    return spec, image


def _one_hot(columns: tuple[str, ...], label: str) -> list[str]:
    return ["1.0" if c == label else "0.0" for c in columns]


def _check(lesions_per_class: int, size: tuple[int, int]) -> None:
    if isinstance(lesions_per_class, bool) or not isinstance(lesions_per_class, int) or lesions_per_class < 1:
        raise ValueError(f"The 'lesions_per_class' parameter must be a positive integer. Got {lesions_per_class!r} instead.")
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"The 'size' parameter must be (H, W), each at least 16. Got {size!r} instead.")


def _lesions(columns: tuple[str, ...], lesions_per_class: int, images_per_lesion: tuple[int, int],
             size: tuple[int, int], rng: np.random.Generator, out: Path, first_id: int) -> list[tuple[str, str, int]]:
    """Render the lesions; returns ``(image_id, class, lesion number)`` in shuffled id order."""
    out.mkdir(parents=True, exist_ok=True)
    renders = []
    lesion = 0
    for cls in columns:
        for _ in range(lesions_per_class):
            spec = None
            for _k in range(int(rng.integers(images_per_lesion[0], images_per_lesion[1] + 1))):
                new, image = _render(cls, rng, size, spec)
                spec = spec or new
                renders.append((cls, lesion, image))
            lesion += 1
    order = rng.permutation(len(renders))
    rows = []
    for n, k in enumerate(order):
        cls, lesion_no, image = renders[k]
        image_id = f"ISIC_{first_id + n:07d}"
        Image.fromarray(image).save(out / f"{image_id}.jpg", quality=92)
        rows.append((image_id, cls, lesion_no))
    return sorted(rows)


def write_isic2018_layout(
    root: str | Path, *, lesions_per_class: int = 4, images_per_lesion: tuple[int, int] = (1, 2),
    size: tuple[int, int] = (64, 80), seed: int = 0,
) -> dict[str, Path]:
    """Write a tiny ISIC 2018 Task 3 training set in the official layout; returns the paths of
    ``ground_truth``, ``images`` and ``metadata`` (the HAM10000 metadata CSV with lesion ids)."""
    _check(lesions_per_class, size)
    root = Path(root)
    rng = np.random.default_rng([seed, 2018])
    paths = {k: root / v for k, v in ISIC2018_FILES.items()}
    rows = _lesions(ISIC2018_CLASSES, lesions_per_class, images_per_lesion, size, rng, paths["images"], 24306)
    with paths["ground_truth"].open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", *ISIC2018_CLASSES])
        w.writerows([i, *_one_hot(ISIC2018_CLASSES, c)] for i, c, _ in rows)
    with paths["metadata"].open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for i, c, lesion in rows:
            w.writerow([f"HAM_{lesion:07d}", i, c.lower(), "histo", float(5 * int(rng.integers(6, 17))),
                        ("male", "female")[lesion % 2], _SITES_HAM[lesion % len(_SITES_HAM)]])
    return paths


def write_isic2019_layout(
    root: str | Path, *, lesions_per_class: int = 4, images_per_lesion: tuple[int, int] = (1, 2),
    size: tuple[int, int] = (64, 80), seed: int = 0, test_images_per_class: int = 0, test_unknown: int = 0,
) -> dict[str, Path]:
    """Write a tiny ISIC 2019 training set in the official layout (8 classes; ``UNK`` column all
    zero), and with ``test_images_per_class``/``test_unknown`` > 0 a test set whose ground truth
    has ``UNK`` images. Returns the paths of ``ground_truth``, ``images``, ``metadata`` and, with a
    test set, ``test_ground_truth`` and ``test_images``."""
    _check(lesions_per_class, size)
    root = Path(root)
    rng = np.random.default_rng([seed, 2019])
    classes = ISIC2019_COLUMNS[:-1]
    paths = {k: root / v for k, v in ISIC2019_FILES.items()}
    rows = _lesions(classes, lesions_per_class, images_per_lesion, size, rng, paths["images"], 0)
    with paths["ground_truth"].open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", *ISIC2019_COLUMNS])
        w.writerows([i, *_one_hot(ISIC2019_COLUMNS, c)] for i, c, _ in rows)
    with paths["metadata"].open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        for n, (i, _c, lesion) in enumerate(rows):
            lesion_id = "" if n == len(rows) - 1 else f"BCN_{lesion:07d}"  # official rows without a lesion id exist
            w.writerow([i, float(5 * int(rng.integers(6, 17))), _SITES_2019[lesion % len(_SITES_2019)], lesion_id,
                        ("male", "female")[lesion % 2]])
    if test_images_per_class > 0 or test_unknown > 0:
        test_rows: list[tuple[str, str]] = []
        out = root / ISIC2019_TEST_FILES["images"]
        out.mkdir(parents=True, exist_ok=True)
        labels = [c for c in classes for _ in range(test_images_per_class)] + ["UNK"] * test_unknown
        for n, cls in enumerate(labels):
            image_id = f"ISIC_{60000 + n:07d}"
            Image.fromarray(_render(cls, rng, size)[1]).save(out / f"{image_id}.jpg", quality=92)
            test_rows.append((image_id, cls))
        paths["test_ground_truth"] = root / ISIC2019_TEST_FILES["ground_truth"]
        paths["test_images"] = out
        with paths["test_ground_truth"].open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["image", *ISIC2019_COLUMNS])
            w.writerows([i, *_one_hot(ISIC2019_COLUMNS, c)] for i, c in test_rows)
    return paths
