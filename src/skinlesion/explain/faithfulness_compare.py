"""Several attention-map configurations of one bundle, compared on the same images (paired).

A configuration is a CAM method, the layers it reads (fused when several), the TTA views whose
maps are averaged and an input upscaling for the map (:class:`CamConfig`; a spec string such as
``"layercam@blocks.4+bn2;views=flips;scale=2"``). For a seeded, class-stratified sample of one
image per lesion of a split of the bundle's manifest, every configuration explains the bundle's
predicted class; each map is scored by deletion and insertion (Petsiuk et al., BMVC 2018) in the
original RGB image with the whole bundle as the classifier (as
:func:`~skinlesion.explain.faithfulness_split.faithfulness_over_split`), against the *same* smooth
random maps of the image, and by its mass inside the lesion for two masks: the reference box
(``HAM10000_metadata_ext.csv``) and the classical segmentation
(:func:`~skinlesion.explain.segmentation.segment_lesion`), against the mask's area fraction.

Every difference (map vs random, map vs area fraction, configuration vs the reference
configuration) is paired on images, with a percentile bootstrap that resamples lesions. A
configuration *passes* when deletion is lower and insertion higher than random maps, and its mass
inside both masks higher than their area fraction, each interval excluding 0.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from skinlesion._params import positive_int

log = logging.getLogger(__name__)

MASKS: tuple[str, ...] = ("bbox", "segmentation")


@dataclass(frozen=True)
class CamConfig:
    """One attention-map configuration: ``method`` (``None``: the registry's), ``layers`` (module
    names below the backbone; ``None``: the registry's), TTA ``views`` and ``input_scale``."""

    method: str | None = None
    layers: tuple[str, ...] | None = None
    views: tuple[str, ...] = ("identity",)
    input_scale: float = 1.0

    @property
    def name(self) -> str:
        """The spec string that :func:`parse_config` turns back into this configuration."""
        out = self.method or "default"
        if self.layers is not None:
            out += "@" + "+".join(self.layers)
        if tuple(self.views) != ("identity",):
            out += ";views=" + ",".join(self.views)
        if self.input_scale != 1.0:
            out += f";scale={self.input_scale:g}"
        return out

    def cam_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~skinlesion.explain.cam.ensemble_cam`."""
        return {"method": self.method, "layers": self.layers, "views": self.views, "input_scale": self.input_scale}


def parse_config(spec: str) -> CamConfig:
    """``METHOD[@LAYER+LAYER][;views=V,V][;scale=S]`` -> :class:`CamConfig` (checked).

    ``METHOD`` is one of :data:`~skinlesion.explain.cam.METHODS` or ``default`` (the registry's
    method and layers); views take :func:`~skinlesion.inference.tta.parse_views` presets.
    """
    from skinlesion.explain.cam import check_input_scale, check_method
    from skinlesion.inference.tta import parse_views

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"The 'configs' parameter must hold spec strings like 'gradcam++@bn2'. Got {spec!r} instead.")
    head, *options = [p.strip() for p in spec.split(";")]
    method, _, layer_part = head.partition("@")
    layers = tuple(n.strip() for n in layer_part.split("+")) if layer_part else None
    if layers is not None and not all(layers):
        raise ValueError(f"Configuration {spec!r}: empty layer name in {layer_part!r}.")
    views: tuple[str, ...] = ("identity",)
    scale = 1.0
    for opt in options:
        key, _, value = opt.partition("=")
        if key == "views":
            views = parse_views(value)
        elif key == "scale":
            try:
                scale = check_input_scale(float(value))
            except ValueError:
                raise ValueError(f"Configuration {spec!r}: scale must be a number in [1, 4]. Got {value!r}.") from None
        else:
            raise ValueError(f"Configuration {spec!r}: unknown option {key!r}; options are 'views' and 'scale'.")
    method = None if method in ("", "default") else check_method(method)
    return CamConfig(method, layers, views, scale)


def _mass_records(cam: np.ndarray, masks: dict[str, np.ndarray | None]) -> dict[str, float]:
    from skinlesion.explain.faithfulness import mask_fraction, mass_in_mask

    out: dict[str, float] = {}
    for name, mask in masks.items():
        ok = mask is not None and mask.any() and float(cam.sum()) > 0
        out[f"mass_in_{name}"] = mass_in_mask(cam, mask) if ok else float("nan")
        out[f"{name}_fraction"] = mask_fraction(mask, cam.shape) if ok else float("nan")
    return out


def _summaries(records: list[dict[str, Any]], groups: np.ndarray, names: list[str], reference: str,
               n_boot: int, alpha: float, seed: int) -> dict[str, Any]:
    from skinlesion.explain.faithfulness import _paired, beats_random

    def col(name: str, key: str) -> np.ndarray:
        return np.asarray([r["configs"][name][key] for r in records], dtype=np.float64)

    rand_del = np.asarray([r["random_deletion_auc"] for r in records], dtype=np.float64)
    rand_ins = np.asarray([r["random_insertion_auc"] for r in records], dtype=np.float64)
    out: dict[str, Any] = {}
    for name in names:
        s: dict[str, Any] = {
            "deletion": _paired(col(name, "deletion_auc"), rand_del, groups, n_boot, alpha, seed),
            "insertion": _paired(col(name, "insertion_auc"), rand_ins, groups, n_boot, alpha, seed),
        }
        for m in MASKS:
            s[f"mass_in_{m}"] = _paired(col(name, f"mass_in_{m}"), col(name, f"{m}_fraction"), groups, n_boot, alpha, seed)
        if name != reference:
            s["vs_reference"] = {
                k: _paired(col(name, f"{k}_auc"), col(reference, f"{k}_auc"), groups, n_boot, alpha, seed)
                for k in ("deletion", "insertion")
            }
        s["passes"] = all(beats_random(k, s[k]) for k in ("deletion", "insertion", *(f"mass_in_{m}" for m in MASKS)))
        s["by_prediction"] = _by_prediction(records, groups, col(name, "deletion_auc"), rand_del,
                                            col(name, "insertion_auc"), rand_ins, n_boot, alpha, seed)
        s["gain"] = float(s["insertion"]["difference"] - s["deletion"]["difference"])
        s["seconds_cam"] = round(float(sum(r["configs"][name]["seconds_cam"] for r in records)), 2)
        out[name] = s
    return out


#: A predicted class with at least this many images gets its own deletion/insertion stratum.
MIN_STRATUM = 20


def _by_prediction(records: list[dict[str, Any]], groups: np.ndarray, dele: np.ndarray, rand_del: np.ndarray,
                   ins: np.ndarray, rand_ins: np.ndarray, n_boot: int, alpha: float, seed: int) -> dict[str, Any]:
    """Deletion and insertion against random maps within each predicted class of at least
    :data:`MIN_STRATUM` images, and within the rest: a class the model also gives to an image whose
    lesion is blurred away (e.g. NV, the commonest) keeps its probability under deletion whatever
    the map shows, which a pooled figure hides."""
    from skinlesion.explain.faithfulness import _paired

    predicted = np.asarray([str(r.get("predicted")) for r in records])
    big = [c for c in sorted(set(predicted.tolist())) if int((predicted == c).sum()) >= MIN_STRATUM]
    strata = {c: predicted == c for c in big}
    rest = ~np.isin(predicted, big)
    if rest.sum() >= 2 and big:
        strata["other classes"] = rest
    if len(strata) < 2:
        return {}
    return {
        name: {"n": int(m.sum()),
               "deletion": _paired(dele[m], rand_del[m], groups[m], n_boot, alpha, seed),
               "insertion": _paired(ins[m], rand_ins[m], groups[m], n_boot, alpha, seed)}
        for name, m in strata.items()
    }


def summarise_records(records: list[dict[str, Any]], names: Sequence[str] | None = None, *, n_boot: int = 1000,
                      alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Per-configuration summary of per-image records (as :func:`compare_configurations` returns
    under ``summary``); ``names`` default to the first record's configurations, first = reference."""
    if not records:
        raise ValueError("The 'records' parameter must hold at least one per-image record. Got none.")
    names = list(names or records[0]["configs"])
    groups = np.asarray([r["lesion_id"] for r in records], dtype=object).astype(str)
    return _summaries(records, groups, names, names[0], n_boot, alpha, seed)


def choose(summary: dict[str, Any]) -> str | None:
    """The passing configuration with the largest ``gain`` (insertion minus deletion improvement
    over random maps), or ``None`` when none passes."""
    passing = [(s["gain"], name) for name, s in summary.items() if s["passes"]]
    return max(passing)[1] if passing else None


def compare_configurations(
    bundle: Any,
    configs: Sequence[str | CamConfig],
    split: str = "test",
    n: int | None = 100,
    steps: int = 10,
    baseline: str = "blur",
    n_random: int = 3,
    seed: int = 0,
    data_root: str | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    batch_size: int = 64,
    device: str | None = None,
    on_record: Any = None,
) -> dict[str, Any]:
    """Compare attention-map ``configs`` of a bundle on the same lesions of ``split`` (module doc).

    ``configs[0]`` is the reference of the ``vs_reference`` differences. Returns ``summary`` (per
    configuration: ``deletion``, ``insertion`` vs random maps, ``mass_in_bbox`` and
    ``mass_in_segmentation`` vs the area fraction, ``vs_reference``, ``passes``, ``gain``,
    ``seconds_cam``), ``chosen`` (:func:`choose`), ``n``, ``n_lesions``, ``class_counts``,
    ``accuracy``, ``records`` (per image), ``settings``, ``bundle``, ``split``, ``seconds``.
    ``on_record``: called with each image's record as it is done (e.g. to keep partial results).
    """
    from skinlesion.data.splits import group_ids
    from skinlesion.explain.cam import ensemble_cam
    from skinlesion.explain.faithfulness import deletion_insertion, random_baseline
    from skinlesion.explain.faithfulness_split import split_setup

    started = time.perf_counter()
    parsed = [c if isinstance(c, CamConfig) else parse_config(c) for c in configs]
    if not parsed:
        raise ValueError("The 'configs' parameter must hold at least one configuration. Got none.")
    names = [c.name for c in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"The 'configs' parameter holds the same configuration twice: {names}.")
    positive_int("n", n, allow_none=True)
    positive_int("steps", steps)
    positive_int("n_random", n_random)
    bundle, dev, table, rows, masks, predict = split_setup(bundle, split, n, seed, data_root, device, batch_size)
    classes = list(bundle.classes)
    lesions = group_ids(table).to_numpy()
    y = table.labels()
    kw = {"steps": steps, "baseline": baseline, "batch_size": batch_size}
    records: list[dict[str, Any]] = []
    for k, i in enumerate(rows):
        image_id = str(table.frame["image_id"].iloc[i])
        image = table.load_image(int(i))
        x = torch.from_numpy(image).permute(2, 0, 1).float()
        probs = predict(x[None])[0]
        c = int(np.argmax(probs))
        lesion_masks = {"bbox": masks.bbox(image_id, image.shape[:2]), "segmentation": masks.segmentation(image)}
        rnd = random_baseline(predict, x, np.zeros(image.shape[:2], np.float32), c, n_random=n_random,
                              seed=seed + k, kind="smooth", **kw)
        per_config: dict[str, dict[str, float]] = {}
        for cfg in parsed:
            t0 = time.perf_counter()
            cam = ensemble_cam(bundle.members, [image], class_index=[c], **cfg.cam_kwargs()).maps[0]
            t_cam = time.perf_counter() - t0
            di = deletion_insertion(predict, x, cam, c, seed=seed + k, **kw)
            per_config[cfg.name] = {"deletion_auc": di["deletion_auc"], "insertion_auc": di["insertion_auc"],
                                    **_mass_records(cam, lesion_masks), "seconds_cam": t_cam}
        records.append({
            "image_id": image_id, "lesion_id": str(lesions[i]), "label": classes[y[i]], "predicted": classes[c],
            "probability": float(probs[c]), "random_deletion_auc": rnd["deletion_auc"],
            "random_insertion_auc": rnd["insertion_auc"],
            "has_mask": {m: lesion_masks[m] is not None for m in MASKS}, "configs": per_config,
        })
        if on_record is not None:
            on_record(records[-1])
        log.info("compare %d/%d %s (%.0f s)", k + 1, len(rows), image_id, time.perf_counter() - started)
    summary = summarise_records(records, names, n_boot=n_boot, alpha=alpha, seed=seed)
    groups = [r["lesion_id"] for r in records]
    return {
        "summary": summary,
        "chosen": choose(summary),
        "reference": names[0],
        "n": len(records),
        "n_lesions": len(set(groups)),
        "class_counts": {c: int(v) for c, v in sorted(Counter(r["label"] for r in records).items())},
        "accuracy": float(np.mean([r["label"] == r["predicted"] for r in records])),
        "masks": {m: int(sum(r["has_mask"][m] for r in records)) for m in MASKS},
        "records": records,
        "settings": {
            "configs": names, "steps": steps, "baseline": baseline, "n_random": n_random, "random_kind": "smooth",
            "seed": seed, "n_boot": n_boot, "alpha": alpha, "metadata": "not given (image only)",
            "space": "original RGB image; ensemble (identity view) as classifier",
        },
        "bundle": str(bundle.path) if bundle.path is not None else bundle.spec.name,
        "bundle_id": bundle.bundle_id,
        "split": split,
        "seconds": round(time.perf_counter() - started, 2),
    }


__all__ = ["MASKS", "CamConfig", "choose", "compare_configurations", "parse_config", "summarise_records"]
