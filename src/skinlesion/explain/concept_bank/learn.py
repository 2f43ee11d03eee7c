"""Learning a concept bank: sample a split of the bundle's manifest, find concept examples, run TCAV.

:func:`learn_concept_bank` samples images of a split (one per lesion, seeded), turns ABCDE
measurements (:func:`~skinlesion.explain.abcde.measure_abcde`) into the concepts ``asymmetric``,
``irregular_border``, ``multicolour`` and ``large``
(:data:`~skinlesion.explain.concepts.DEFAULT_ABCDE_RULES`) and/or reads user concept folders, and runs
:class:`~skinlesion.explain.concepts.TCAVExplainer` for every member at the layer of
:func:`concept_layer`; the member-weighted table comes from :mod:`._stats`.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion.errors import DataError
from skinlesion.explain._tcav_stats import ConceptResult, _check_number
from skinlesion.explain.concept_bank._stats import mean_cav, weighted_results
from skinlesion.explain.concept_bank.bank import BANK_FOLDER, BankMember, ConceptBank, ConceptVector
from skinlesion.explain.concepts import (
    DEFAULT_ABCDE_RULES,
    RANDOM_FOLDER,
    TCAVExplainer,
    concept_examples_from_folders,
)
from skinlesion.models.registry import backbone_prefix, get_spec

logger = logging.getLogger("skinlesion.explain.concept_bank")

#: timm model name pattern -> module whose output is the TCAV layer. The layer must sit below a
#: non-linearity: at the pooled classifier input the gradient of a logit is the same for every
#: image (linear head), so TCAV scores degenerate to 0/1.
FAMILY_LAYERS: tuple[tuple[str, str], ...] = (
    ("resnet*", "layer3"),
    ("test_resnet*", "layer3"),
    ("densenet*", "features.denseblock4"),
    ("efficientnet*", "blocks"),  # last block stage, before conv_head / bn2
    ("tf_efficientnet*", "blocks"),  # EfficientNet-Lite and V2 included
    ("test_efficientnet*", "blocks"),
    ("mobilenetv3*", "blocks"),
    ("tf_mobilenetv3*", "blocks"),
)


def concept_layer(backbone: str) -> str:
    """The TCAV layer (a module name) of a registered backbone, chosen from its timm model name.

    ResNet: ``layer3``; DenseNet: ``features.denseblock4``; EfficientNet(-Lite/V2), MobileNetV3:
    ``blocks``. Kim et al. 2018 read CAVs below the logits so derivatives depend on the image.
    """
    timm_name = get_spec(backbone).timm_name
    for pattern, layer in FAMILY_LAYERS:
        if fnmatch.fnmatchcase(timm_name, pattern):
            return layer
    families = ", ".join(p for p, _ in FAMILY_LAYERS)
    raise ValueError(f"No TCAV concept layer is known for backbone {backbone!r} (timm model {timm_name!r}): "
                     f"the 'backbone' must belong to one of the families {families}. Pass "
                     "layers={member_name: '<module name>'} to learn_concept_bank for other architectures.")


def _split_table(bundle: Any, split: str, data_root: str | None) -> tuple[Any, Path]:
    """Rows of ``split`` of the bundle's (or its one checkpoint's) manifest, and the default bank folder."""
    from skinlesion.evaluation import load_bundle_split

    folder = bundle.path if bundle.path is not None else Path(bundle.spec.members[0].dir).parent
    return load_bundle_split(bundle, split, data_root), folder / BANK_FOLDER


def _one_per_group(rows: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random image of every group among ``rows``, groups in random order."""
    perm = rng.permutation(rows)
    _, first = np.unique(groups[perm], return_index=True)
    return perm[np.sort(first)]


def dataset_pixel_spacing(member_meta: Mapping[str, Any], image_shape: Sequence[int]) -> float | None:
    """Millimetres per pixel when known: synthetic lesions span ``FIELD_OF_VIEW_MM`` across the
    width; HAM10000/ISIC images record no scale, so None (the ``large`` concept is then unknown)."""
    from skinlesion.data.synthetic import default_pixel_spacing

    fmt = member_meta.get("config", {}).get("data", {}).get("format") or member_meta.get("data", {}).get("format")
    return default_pixel_spacing((int(image_shape[0]), int(image_shape[1]))) if fmt == "synthetic" else None


def _abcde_concepts(images: list[np.ndarray], member_meta: Mapping[str, Any],
                    notes: list[str]) -> tuple[dict[str, list[int]], dict[str, dict[str, Any]]]:
    """Positive image indices and counts of each ABCDE concept (DEFAULT_ABCDE_RULES)."""
    from skinlesion.explain.abcde import measure_abcde

    measurements: list[dict[str, Any] | None] = []
    spacings = set()
    for im in images:
        spacing = dataset_pixel_spacing(member_meta, im.shape)
        spacings.add(spacing)
        try:
            measurements.append(measure_abcde(im, pixel_spacing_mm=spacing).to_dict())
        except ValueError as e:  # no lesion found by the automatic segmentation
            logger.debug("ABCDE measurement failed: %s", e)
            measurements.append(None)
    failed = sum(m is None for m in measurements)
    if failed:
        notes.append(f"ABCDE measurement failed on {failed} of {len(images)} sampled image(s) (no lesion segmented); "
                     "their automatic concepts are unknown.")
    positives: dict[str, list[int]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for name, rule in DEFAULT_ABCDE_RULES.items():
        verdicts = [None if m is None else rule(m) for m in measurements]
        positives[name] = [i for i, v in enumerate(verdicts) if v]
        counts[name] = {"source": "abcde", "examples": len(positives[name]),
                        "negative": sum(v is False for v in verdicts), "unknown": sum(v is None for v in verdicts)}
    for name, c in counts.items():
        if c["unknown"] == len(images) and not (name == "large" and spacings == {None}):
            notes.append(f"{name}: unknown for every sampled image; not learned.")
    if counts["large"]["unknown"] == len(images) and spacings == {None}:
        notes.append("large (diameter > 6 mm): unknown for every image, because the pixel spacing of this dataset is "
                     "not recorded (HAM10000/ISIC images carry no scale), so diameters cannot be measured in mm. "
                     "The concept was not learned.")
    return positives, counts


def learn_concept_bank(
    bundle: Any, split: str = "train", n_per_class: int = 40, concepts_dir: str | Path | None = None,
    abcde_concepts: bool = True, n_runs: int = 10, alpha: float = 0.05, seed: int = 0, data_root: str | None = None,
    *, min_concept_examples: int = 5, random_pool_size: int = 100, min_cav_accuracy: float = 0.6,
    layers: Mapping[str, str] | None = None, batch_size: int = 32,
) -> ConceptBank:
    """Learn CAVs and TCAV scores (Kim et al., ICML 2018) of every member of ``bundle``.

    Samples up to ``n_per_class`` images per class of ``split`` (one per lesion, seeded); these are
    the class images whose gradients are scored and, with ``abcde_concepts``, the images whose
    ABCDE measurements give the automatic concepts. ``concepts_dir`` adds user concepts
    (``<dir>/<concept>/<images>``; a ``random`` subfolder replaces the random pool). The random
    pool is ``random_pool_size`` images of ``split`` (one per lesion) from lesions that gave no
    concept example. Concepts with fewer than ``min_concept_examples`` examples are skipped (see
    ``notes``). ``layers`` overrides :func:`concept_layer` per member name.

    Raises:
        DataError: no concept has enough examples (names every concept and its count), or the
            random pool is too small.
        ValueError: a bad parameter, or a user concept named like an automatic one.
    """
    from skinlesion.data.splits import group_ids

    _check_number("n_per_class", n_per_class, low=1, integer=True)
    _check_number("min_concept_examples", min_concept_examples, low=2, integer=True)
    _check_number("random_pool_size", random_pool_size, low=4, integer=True)
    _check_number("seed", seed, low=0, integer=True)
    _check_number("n_runs", n_runs, low=2, integer=True)
    _check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
    if not abcde_concepts and concepts_dir is None:
        raise ValueError("No concept source: the 'abcde_concepts' parameter is False and 'concepts_dir' is None. "
                         "Enable ABCDE concepts or give a folder of concept examples.")
    layers = dict(layers or {})
    unknown = sorted(set(layers) - {m.name for m in bundle.members})
    if unknown:
        raise ValueError(f"The 'layers' parameter names unknown member(s) {unknown}; members are "
                         f"{[m.name for m in bundle.members]}.")
    member_layers = {
        m.name: layers.get(m.name) or backbone_prefix(m.model) + concept_layer(m.backbone) for m in bundle.members
    }

    table, default_dir = _split_table(bundle, split, data_root)
    rng = np.random.default_rng(seed)
    groups, labels = group_ids(table).to_numpy(), table.labels()
    sampled = {int(k): _one_per_group(np.flatnonzero(labels == k), groups, rng)[:n_per_class]
               for k in np.unique(labels)}
    rows = np.concatenate(list(sampled.values()))
    images = {int(i): table.load_image(int(i)) for i in rows}

    notes: list[str] = []
    concepts: dict[str, list[np.ndarray]] = {}
    counts: dict[str, dict[str, Any]] = {}
    used_groups: set[str] = set()
    if abcde_concepts:
        positives, counts = _abcde_concepts([images[int(i)] for i in rows], bundle.members[0].meta, notes)
        for name, idx in positives.items():
            concepts[name] = [images[int(rows[i])] for i in idx]
            if len(idx) >= min_concept_examples:
                used_groups.update(groups[rows[idx]])
    pool_images: list[np.ndarray] | None = None
    pool_source = "split"
    if concepts_dir is not None:
        user = concept_examples_from_folders(concepts_dir)
        pool_images = user.pop(RANDOM_FOLDER, None)
        pool_source = "split" if pool_images is None else f"{concepts_dir}/{RANDOM_FOLDER}"
        clash = sorted(set(user) & set(concepts))
        if clash:
            raise ValueError(f"The 'concepts_dir' folder {concepts_dir} has concept(s) {clash} named like automatic "
                             "ABCDE concepts; rename the folders or pass abcde_concepts=False.")
        for name, ims in user.items():
            concepts[name] = ims
            counts[name] = {"source": "folder", "examples": len(ims), "negative": None, "unknown": None}
    for name, c in counts.items():
        if c["examples"] < min_concept_examples and c.get("unknown") != len(rows):
            notes.append(f"{name}: skipped, {c['examples']} example(s) (at least {min_concept_examples} needed).")
    learnable = {n: ims for n, ims in concepts.items() if len(ims) >= min_concept_examples}
    if not learnable:
        listed = ", ".join(f"{n!r}: {c['examples']}" + (f" ({c['unknown']} unknown)" if c.get("unknown") else "")
                           for n, c in counts.items())
        raise DataError(f"No concept has enough examples (at least min_concept_examples={min_concept_examples}) "
                        f"among {len(rows)} sampled image(s) of split {split!r}: {listed}. Raise 'n_per_class' or "
                        "give concept folders ('concepts_dir').")
    if pool_images is None:
        free = np.flatnonzero(~np.isin(groups, list(used_groups)))
        pool_rows = _one_per_group(free, groups, rng)[:random_pool_size]
        if len(pool_rows) < 4:
            raise DataError(f"The random pool of split {split!r} has {len(pool_rows)} lesion(s) that gave no concept "
                            "example; at least 4 are needed. Lower 'n_per_class' or add a 'random' concept folder.")
        pool_images = [images[int(i)] if int(i) in images else table.load_image(int(i)) for i in pool_rows]

    class_images = {k: [images[int(i)] for i in r] for k, r in sampled.items() if len(r)}
    member_results: dict[str, list[ConceptResult]] = {}
    cavs: dict[tuple[str, str], ConceptVector] = {}
    for m in bundle.members:
        logger.info("TCAV for member %s at layer %s (%d concepts, %d classes)", m.name, member_layers[m.name],
                    len(learnable), len(class_images))
        explainer = TCAVExplainer(m, layer=member_layers[m.name], n_runs=n_runs, alpha=alpha, seed=seed,
                                  min_cav_accuracy=min_cav_accuracy, batch_size=batch_size)
        member_results[m.name] = explainer.explain_classes(class_images, learnable, pool_images)
        for name, runs in explainer.cavs_.items():
            cavs[(m.name, name)] = mean_cav(m.name, name, member_layers[m.name], runs)
    weights = {m.name: float(m.weight) for m in bundle.members}
    results = weighted_results(member_results, weights, correction="bonferroni", min_cav_accuracy=min_cav_accuracy)
    return ConceptBank(
        classes=tuple(bundle.classes),
        members=[BankMember(m.name, m.backbone, member_layers[m.name], float(m.weight), m.meta.get("weights_sha256"))
                 for m in bundle.members],
        cavs=cavs, results=results, member_results=member_results, concept_counts=counts, notes=notes,
        settings={"split": split, "n_per_class": n_per_class, "n_runs": n_runs, "alpha": alpha, "seed": seed,
                  "correction": "bonferroni", "min_cav_accuracy": min_cav_accuracy,
                  "min_concept_examples": min_concept_examples, "n_random_pool": len(pool_images),
                  "random_pool": pool_source,
                  "n_class_images": {bundle.classes[k]: len(r) for k, r in sampled.items()},
                  "abcde_concepts": abcde_concepts, "concepts_dir": None if concepts_dir is None else str(concepts_dir),
                  "bundle_id": bundle.bundle_id, "default_dir": str(default_dir)},
    )


__all__ = ["FAMILY_LAYERS", "concept_layer", "dataset_pixel_spacing", "learn_concept_bank"]
