"""Dataset-level faithfulness of ensemble CAMs: deletion/insertion and mass in the lesion over a split.

For a seeded, class-stratified sample of one image per lesion of a split of the bundle's own
lesion-disjoint manifest, the ensemble's CAM of its predicted class (Grad-CAM++, Chattopadhay et
al. 2018, by default) is scored with deletion and insertion (Petsiuk et al., BMVC 2018) against
random maps of the same image, and by the fraction of its mass inside the lesion against the
lesion's area fraction. Curves are computed in the *original image space*: pixels are removed from
the RGB image itself, and the whole bundle (every member with its own input size and
normalisation, weights and temperatures, identity view) is the classifier, so the test is of the
explanation of the decision actually made, not of one member's input tensor.

Lesion masks (``mask_source``): ``"truth"``, a reference segmentation file
(``masks/<id>_segmentation.png``, ISIC 2018 Task 1 naming, as the synthetic writer produces with
``write_masks``, or ``HAM10000_segmentations_lesion_tschandl/``); ``"bbox"``, a reference box
(``HAM10000_metadata_ext.csv``, bottom/right exclusive, or the synthetic ``synthetic_truth.csv``,
inclusive) as a box mask; ``"segmentation"``, :func:`~skinlesion.explain.segmentation.segment_lesion`.
``"auto"`` takes, per image, the first of these that exists.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from skinlesion._params import positive_int
from skinlesion.data.splits import group_ids
from skinlesion.data.table import LesionTable
from skinlesion.errors import DataError
from skinlesion.ensemble.split import SPLITS, load_bundle_split

log = logging.getLogger(__name__)

MASK_SOURCES: tuple[str, ...] = ("auto", "truth", "bbox", "segmentation")
#: Folders (under the dataset root) searched for ``<image_id>_segmentation.png`` reference masks.
MASK_DIRS: tuple[str, ...] = ("masks", "HAM10000_segmentations_lesion_tschandl", "ISIC2018_Task1_Training_GroundTruth")
#: Box tables under the dataset root and whether their bottom/right are inclusive.
BOX_FILES: tuple[tuple[str, bool], ...] = (("HAM10000_metadata_ext.csv", False), ("synthetic_truth.csv", True))


def _choice(parameter: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"The '{parameter}' parameter must be one of {set(choices)}. Got {value!r} instead.")
    return value


# -- sampling ------------------------------------------------------------------------------------
def _allocate(counts: np.ndarray, n: int) -> np.ndarray:
    """Proportional allocation of ``n`` draws over strata of ``counts`` (largest remainder), at least
    one per stratum when ``n`` allows; ``n < counts.sum()``."""
    exact = n * counts / counts.sum()
    q = np.minimum(np.floor(exact).astype(np.int64), counts)
    if n >= counts.size:
        q = np.maximum(q, 1)
    while q.sum() > n:  # the minimum of one overshot: take from the most over-represented stratum
        q[int(np.argmax(np.where(q > 1, q - exact, -np.inf)))] -= 1
    while q.sum() < n:
        q[int(np.argmax(np.where(q < counts, exact - q, -np.inf)))] += 1
    return q


def sample_one_per_lesion(table: LesionTable, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted row indices: one random image per lesion, then ``n`` lesions stratified by class.

    Classes get ``n`` in proportion to their lesions (largest remainder), every present class at
    least one when ``n`` is at least the number of classes. ``n=None`` (or more than the lesions)
    keeps every lesion. Deterministic for a ``seed``.
    """
    n = positive_int("n", n, allow_none=True)
    rng = np.random.default_rng(seed)
    groups = group_ids(table).to_numpy()
    order = rng.permutation(len(table))
    _, first = np.unique(groups[order], return_index=True)
    picks = order[first]
    if n is None or n >= picks.size:
        return np.sort(picks)
    cls = table.labels()[picks]
    present, counts = np.unique(cls, return_counts=True)
    chosen = [rng.choice(picks[cls == c], size=int(q), replace=False) for c, q in zip(present, _allocate(counts, n))]
    return np.sort(np.concatenate(chosen))


# -- lesion masks --------------------------------------------------------------------------------
class LesionMasks:
    """Finds a reference lesion mask for images of a table (see the module doc for the sources)."""

    def __init__(self, table: LesionTable, rows: Sequence[int], data_root: str | Path | None = None) -> None:
        roots: list[Path] = [Path(data_root)] if data_root else []
        for p in table.frame["path"].iloc[list(rows)]:
            if isinstance(p, str) and p:
                roots += [Path(p).parent.parent, Path(p).parent]
        self.roots = list(dict.fromkeys(r for r in roots if r.is_dir()))
        self._boxes: dict[str, tuple[int, int, int, int]] = {}
        self.box_files: list[str] = []
        for root in self.roots:
            for name, inclusive in BOX_FILES:
                f = root / name
                if f.is_file() and str(f) not in self.box_files:
                    self.box_files.append(str(f))
                    self._read_boxes(f, inclusive)

    def _read_boxes(self, path: Path, inclusive: bool) -> None:
        df = pd.read_csv(path)
        cols = ["image_id", "top", "bottom", "left", "right"]
        if not set(cols) <= set(df.columns):
            return
        df = df.dropna(subset=cols)
        end = 1 if inclusive else 0
        for r in df[cols].itertuples(index=False):
            self._boxes.setdefault(str(r[0]), (int(r[1]), int(r[2]) + end, int(r[3]), int(r[4]) + end))

    def truth_file(self, image_id: str) -> Path | None:
        for root in self.roots:
            for d in MASK_DIRS:
                f = root / d / f"{image_id}_segmentation.png"
                if f.is_file():
                    return f
        return None

    def truth(self, image_id: str) -> np.ndarray | None:
        from PIL import Image

        f = self.truth_file(image_id)
        if f is None:
            return None
        with Image.open(f) as im:
            return np.asarray(im.convert("L")) > 127

    def bbox(self, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
        box = self._boxes.get(image_id)
        if box is None:
            return None
        top, bottom, left, right = box
        if not (0 <= top < bottom <= shape[0] and 0 <= left < right <= shape[1]):
            raise DataError(
                f"The reference box of image {image_id!r} ({box}, from {self.box_files}) does not fit its "
                f"image of size {shape}: expected 0 <= top < bottom <= height and 0 <= left < right <= width."
            )
        mask = np.zeros(shape, dtype=bool)
        mask[top:bottom, left:right] = True
        return mask

    @staticmethod
    def segmentation(image: np.ndarray) -> np.ndarray | None:
        from skinlesion.explain.segmentation import segment_lesion

        mask = segment_lesion(image).mask
        return mask if mask.any() else None

    def get(self, image_id: str, image: np.ndarray, source: str) -> tuple[np.ndarray | None, str]:
        """``(mask or None, source used)``; ``"none"`` when the requested source has no mask for it."""
        order = ("truth", "bbox", "segmentation") if source == "auto" else (source,)
        for s in order:
            if s == "truth":
                mask = self.truth(image_id)
            elif s == "bbox":
                mask = self.bbox(image_id, image.shape[:2])
            else:
                mask = self.segmentation(image)
            if mask is not None:
                return mask, s
        return None, "none"


# -- the ensemble as a classifier of RGB images ------------------------------------------------
def ensemble_predict_fn(bundle: Any, *, device: str | torch.device | None = None, batch_size: int = 64) -> Any:
    """``(B, 3, H, W)`` float RGB in 0..255 -> bundle probabilities ``(B, K)`` (identity view).

    Images are rounded to uint8 and every member preprocesses them itself; the members' outputs
    are combined with the bundle's weights and temperatures (:meth:`Bundle.log_probs`).
    """
    from skinlesion.ensemble.predict import images_view_logits

    def predict(batch: torch.Tensor) -> np.ndarray:
        arr = batch.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for start in range(0, arr.shape[0], batch_size):
            chunk = list(arr[start : start + batch_size])
            logits = [images_view_logits(m, chunk, ("identity",), device=device) for m in bundle.members]
            out.append(np.exp(bundle.log_probs(logits)))
        return np.concatenate(out)

    return predict


def split_setup(
    bundle: Any, split: str, n: int | None, seed: int, data_root: str | None, device: str | torch.device | None, batch_size: int
) -> tuple[Any, torch.device, LesionTable, np.ndarray, LesionMasks, Any]:
    """What a faithfulness run over a split starts from: the loaded bundle (members in eval mode on
    ``device``), the device, the split's table, one sampled image per lesion (``n``), their lesion
    masks and the ensemble's prediction function."""
    from skinlesion.ensemble.bundle import Bundle, load_bundle
    from skinlesion.ensemble.predict import default_device

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    dev = default_device(device)
    for m in bundle.members:
        m.model.to(dev).eval()
    table = load_bundle_split(bundle, split, data_root)
    rows = sample_one_per_lesion(table, n, seed)
    return bundle, dev, table, rows, LesionMasks(table, rows, data_root), ensemble_predict_fn(bundle, device=dev, batch_size=batch_size)


def faithfulness_over_split(
    bundle: Any,
    split: str = "test",
    n: int | None = 100,
    method: str | None = None,
    steps: int = 20,
    baseline: str = "blur",
    n_random: int = 5,
    random_kind: str = "smooth",
    mask_source: str = "auto",
    seed: int = 0,
    data_root: str | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Deletion/insertion and mass-in-lesion of the ensemble CAM over ``n`` lesions of a split.

    ``bundle`` is a :class:`~skinlesion.ensemble.bundle.Bundle` or a bundle folder. The class
    explained and tracked is the bundle's calibrated argmax on the identity view (no TTA, no
    decision thresholds), recorded per image as ``predicted``. ``method=None``: the members'
    registry default method and layers (what reports show). See the module doc for the protocol (Petsiuk et al. 2018; Grad-CAM, Selvaraju et al. 2017; Grad-CAM++,
    Chattopadhay et al. 2018). With ``mask_source`` other than ``"auto"``, images lacking that
    source get no mass-in-mask value (NaN, counted under ``"none"``); if none has it, DataError.

    Returns ``summary`` (:func:`~skinlesion.explain.faithfulness.faithfulness_summary`, resampled
    by lesion), ``n``, ``n_lesions``, ``class_counts`` (true classes of the sample),
    ``mask_source`` (``requested`` and per-source ``used`` counts), ``records`` (one per image),
    ``settings``, ``bundle``, ``split`` and ``seconds``.
    """
    from skinlesion.explain.cam import check_method, ensemble_cam
    from skinlesion.explain.faithfulness import (
        BASELINES,
        RANDOM_KINDS,
        evaluate_saliency,
        faithfulness_summary,
    )

    started = time.perf_counter()
    _choice("split", split, SPLITS)
    if method is not None:
        check_method(method)
    _choice("baseline", baseline, BASELINES)
    _choice("random_kind", random_kind, RANDOM_KINDS)
    _choice("mask_source", mask_source, MASK_SOURCES)
    positive_int("n", n, allow_none=True)
    positive_int("steps", steps)
    positive_int("n_random", n_random)
    positive_int("batch_size", batch_size)
    bundle, dev, table, rows, masks, predict = split_setup(bundle, split, n, seed, data_root, device, batch_size)
    classes = list(bundle.classes)
    lesions = group_ids(table).to_numpy()
    y = table.labels()
    records: list[dict[str, Any]] = []
    shown = {"method": method, "layers": None}
    for k, i in enumerate(rows):
        image = table.load_image(int(i))
        x = torch.from_numpy(image).permute(2, 0, 1).float()
        probs = predict(x[None])[0]
        c = int(np.argmax(probs))
        res_cam = ensemble_cam(bundle.members, [image], class_index=[c], method=method)
        cam, shown = res_cam.maps[0], {"method": res_cam.method, "layers": list(res_cam.layers)}
        mask, used = masks.get(str(table.frame["image_id"].iloc[i]), image, mask_source)
        rec = evaluate_saliency(
            predict, x, cam, c, mask=mask, steps=steps, baseline=baseline,
            n_random=n_random, seed=seed + k, kind=random_kind, batch_size=batch_size,
        )
        if mask is None:
            rec.update(mass_in_mask=float("nan"), mask_fraction=float("nan"))
        records.append({
            "image_id": str(table.frame["image_id"].iloc[i]),
            "lesion_id": str(lesions[i]),
            "label": classes[y[i]],
            "predicted": classes[c],
            "probability": float(probs[c]),
            "mask_source": used,
            **rec,
        })
        log.debug("faithfulness %d/%d %s", k + 1, len(rows), records[-1])
    used_counts = dict(Counter(r["mask_source"] for r in records))
    if mask_source != "auto" and used_counts.get("none", 0) == len(records):
        raise DataError(
            f"No image of the sample has a {mask_source!r} lesion mask (looked in {[str(r) for r in masks.roots]} "
            f"for {list(MASK_DIRS)} or {[f for f, _ in BOX_FILES]}); use mask_source='auto' or 'segmentation'."
        )
    summary = faithfulness_summary(records, [r["lesion_id"] for r in records], n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "summary": summary,
        "n": len(records),
        "n_lesions": len({r["lesion_id"] for r in records}),
        "class_counts": {c: int(v) for c, v in sorted(Counter(r["label"] for r in records).items())},
        "accuracy": float(np.mean([r["label"] == r["predicted"] for r in records])),
        "mask_source": {"requested": mask_source, "used": used_counts},
        "records": records,
        "settings": {
            "method": shown["method"], "layers": shown["layers"], "steps": steps, "baseline": baseline, "n_random": n_random,
            "random_kind": random_kind, "seed": seed, "n_boot": n_boot, "alpha": alpha,
            "space": "original RGB image; ensemble (identity view) as classifier", "cam_views": ["identity"],
        },
        "bundle": str(bundle.path) if bundle.path is not None else bundle.spec.name,
        "split": split,
        "seconds": round(time.perf_counter() - started, 2),
    }


__all__ = [
    "MASK_SOURCES",
    "LesionMasks",
    "ensemble_predict_fn",
    "faithfulness_over_split",
    "sample_one_per_lesion",
]
