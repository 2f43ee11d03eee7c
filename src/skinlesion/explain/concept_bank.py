"""A concept bank for a decision bundle: TCAV (Kim et al., ICML 2018) per member, weighted over members.

:func:`learn_concept_bank` samples images of a split of the bundle's own manifest (one per lesion,
seeded), turns ABCDE measurements (:func:`~skinlesion.explain.abcde.measure_abcde`) into the
concepts ``asymmetric``, ``irregular_border``, ``multicolour`` and ``large``
(:data:`~skinlesion.explain.concepts.DEFAULT_ABCDE_RULES`; its keys are those of
:meth:`ABCDEResult.to_dict`) and/or reads user concept folders, and runs
:class:`~skinlesion.explain.concepts.TCAVExplainer` for every member at an intermediate layer
(:func:`concept_layer`). The weighted table combines the members run by run: every member sees
the same random negative set in run ``i`` (same seed, same pool), so the ensemble's score of run
``i`` is the weighted mean of the members' run-``i`` scores, t-tested against the weighted random
runs as in Kim et al. §3.2 and Bonferroni-corrected over all (class, concept) tests.

:func:`concept_sensitivity` gives, for one image, the conceptual sensitivity ``S_{C,k}(x)``
(Kim et al. eq. 1) along each member's mean CAV, weighted over members, next to the concept's
TCAV significance for that class. Decision support only: a concept that is not significant for a
class must not be read as an explanation, and per-image sensitivities are local derivatives.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion.errors import DataError
from skinlesion.explain._tcav_stats import (
    ConceptResult,
    _check_number,
    correct_pvalues,
    two_sided_pvalue,
)
from skinlesion.explain.concepts import (
    DEFAULT_ABCDE_RULES,
    RANDOM_FOLDER,
    TCAVExplainer,
    concept_examples_from_folders,
)
from skinlesion.models.registry import backbone_prefix, get_spec

logger = logging.getLogger(__name__)

FORMAT = "skinlesion-concept-bank"
FORMAT_VERSION = 1
CONCEPTS_JSON = "concepts.json"
CAVS_NPZ = "cavs.npz"
BANK_FOLDER = "concepts"

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


@dataclass(frozen=True)
class BankMember:
    """A bundle member as the bank saw it (``weights_sha256`` ties the CAVs to its weights)."""

    name: str
    backbone: str
    layer: str
    weight: float
    weights_sha256: str | None


@dataclass(frozen=True, eq=False)
class ConceptVector:
    """Mean CAV of one concept at one member's layer (Kim et al. 2018, §3.1).

    ``vector``: unit-normalised mean of the ``n_runs`` unit CAVs (float32, flattened layer);
    ``consistency``: norm of that mean before normalising (1 when all runs agree, near 0 when they
    point anywhere); ``accuracy``/``accuracy_std``: cross-validated balanced accuracy over runs.
    """

    member: str
    concept: str
    layer: str
    vector: np.ndarray
    accuracy: float
    accuracy_std: float
    consistency: float
    n_runs: int


@dataclass(eq=False)
class ConceptBank:
    """CAVs and TCAV results of a bundle (Kim et al. 2018), saved next to the bundle.

    ``results``: the member-weighted TCAV table; ``member_results``: each member's own table;
    ``cavs``: ``(member, concept) -> ConceptVector``; ``concept_counts``: per concept its
    ``source`` (``abcde``/``folder``) and ``examples``/``negative``/``unknown`` counts;
    ``notes``: what could not be learned and why; ``settings``: how the bank was learned.
    """

    classes: tuple[str, ...]
    members: list[BankMember]
    cavs: dict[tuple[str, str], ConceptVector]
    results: list[ConceptResult]
    member_results: dict[str, list[ConceptResult]]
    concept_counts: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def concepts(self) -> list[str]:
        """Names of the learned concepts, in learning order."""
        return list(dict.fromkeys(c for _, c in self.cavs))

    def result(self, concept: str, class_index: int, member: str | None = None) -> ConceptResult | None:
        """The weighted (or ``member``'s) TCAV result of ``concept`` for ``class_index``, if tested."""
        rows = self.results if member is None else self.member_results[member]
        return next((r for r in rows if r.concept == concept and r.class_index == class_index), None)

    def table(self, member: str | None = None) -> list[dict[str, Any]]:
        """Rows (class, concept, TCAV mean/std, random baseline, p raw/corrected, significant, CAV
        accuracy) of the weighted table or of one member's, ordered by class then concept."""
        rows = self.results if member is None else self.member_results[member]
        return [{"class": self.classes[r.class_index], "class_index": r.class_index, "concept": r.concept,
                 "tcav_mean": r.score_mean, "tcav_std": r.score_std, "random_mean": r.random_mean,
                 "p_value": r.p_value, "p_value_corrected": r.p_value_corrected, "significant": r.significant,
                 "cav_accuracy": r.cav_accuracy, "n_concept_examples": r.n_concept_examples,
                 "n_class_examples": r.n_class_examples} for r in sorted(rows, key=lambda r: r.class_index)]

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest: concepts, example counts, significant pairs, notes."""
        return {"concepts": self.concepts, "members": [asdict(m) for m in self.members],
                "concept_counts": self.concept_counts, "n_tests": len(self.results),
                "significant": [f"{r.concept}->{self.classes[r.class_index]}" for r in self.results if r.significant],
                "notes": self.notes, "settings": self.settings}

    # -- persistence --

    def _meta(self) -> dict[str, Any]:
        keys = list(self.cavs)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "classes": list(self.classes),
            "members": [asdict(m) for m in self.members],
            "cavs": [_vector_meta(self.cavs[key]) | {"array": f"cav_{i}"} for i, key in enumerate(keys)],
            "results": [asdict(r) for r in self.results],
            "member_results": {m: [asdict(r) for r in rows] for m, rows in self.member_results.items()},
            "concept_counts": self.concept_counts, "notes": self.notes, "settings": self.settings,
        }

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``concepts.json`` and ``cavs.npz`` into ``directory`` (default: the folder recorded
        at learning time, ``<bundle>/concepts``); returns the folder."""
        if directory is None:
            directory = self.settings.get("default_dir")
            if directory is None:
                raise ValueError("The 'directory' parameter is required: this bank records no default folder.")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        np.savez(out / CAVS_NPZ, **{e["array"]: self.cavs[(e["member"], e["concept"])].vector for e in meta["cavs"]})
        (out / CONCEPTS_JSON).write_text(json.dumps(meta, indent=2, default=_json_default))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> ConceptBank:
        """Read a bank written by :meth:`save` (``directory`` or a bundle folder holding ``concepts/``)."""
        d = Path(directory)
        if not (d / CONCEPTS_JSON).is_file() and (d / BANK_FOLDER / CONCEPTS_JSON).is_file():
            d = d / BANK_FOLDER
        for name in (CONCEPTS_JSON, CAVS_NPZ):
            if not (d / name).is_file():
                raise DataError(f"Concept bank file {d / name} is missing: expected {CONCEPTS_JSON} and {CAVS_NPZ} "
                                "written by ConceptBank.save (`skinlesion explain concepts`).")
        try:
            meta = json.loads((d / CONCEPTS_JSON).read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{d / CONCEPTS_JSON} is not valid JSON ({e}).") from None
        if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(f"{d / CONCEPTS_JSON}: expected format {FORMAT!r} version <= {FORMAT_VERSION}. "
                            f"Got {meta.get('format')!r} version {meta.get('format_version')!r}.")
        with np.load(d / CAVS_NPZ) as arrays:
            missing = [e["array"] for e in meta["cavs"] if e["array"] not in arrays]
            if missing:
                raise DataError(f"{d / CAVS_NPZ} lacks the CAV array(s) {missing} listed in {CONCEPTS_JSON}.")
            cavs = {(e["member"], e["concept"]): ConceptVector(
                **{k: v for k, v in e.items() if k != "array"}, vector=arrays[e["array"]]) for e in meta["cavs"]}
        return cls(classes=tuple(meta["classes"]), members=[BankMember(**m) for m in meta["members"]], cavs=cavs,
                   results=[_result(r) for r in meta["results"]],
                   member_results={m: [_result(r) for r in rows] for m, rows in meta["member_results"].items()},
                   concept_counts=meta["concept_counts"], notes=list(meta["notes"]), settings=meta["settings"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConceptBank):
            return NotImplemented
        same_meta = json.loads(json.dumps(self._meta(), default=_json_default)) == json.loads(
            json.dumps(other._meta(), default=_json_default))
        return same_meta and all(np.array_equal(v.vector, other.cavs[k].vector) and v.vector.dtype ==
                                 other.cavs[k].vector.dtype for k, v in self.cavs.items())


def _vector_meta(v: ConceptVector) -> dict[str, Any]:
    return {"member": v.member, "concept": v.concept, "layer": v.layer, "accuracy": v.accuracy,
            "accuracy_std": v.accuracy_std, "consistency": v.consistency, "n_runs": v.n_runs}


def _result(d: Mapping[str, Any]) -> ConceptResult:
    return ConceptResult(**{**d, "scores": tuple(d["scores"]), "random_scores": tuple(d["random_scores"])})


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Cannot write {type(o).__name__} to {CONCEPTS_JSON}")


# --- learning ------------------------------------------------------------------------------------


def _split_table(bundle: Any, split: str, data_root: str | None) -> tuple[Any, Path]:
    """Rows of ``split`` of the bundle's (or its one checkpoint's) manifest, and the default bank folder."""
    from skinlesion.evaluation import load_bundle_split

    folder = bundle.path if bundle.path is not None else Path(bundle.meta["members"][0]["dir"]).parent
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


def _mean_cav(member: str, concept: str, layer: str, cavs: Sequence[Any]) -> ConceptVector:
    vectors = np.stack([c.vector_ for c in cavs])
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    unit = mean / norm if norm > 0 else np.zeros_like(mean)
    accs = [c.accuracy_ for c in cavs]
    return ConceptVector(member, concept, layer, unit.astype(np.float32), float(np.mean(accs)), float(np.std(accs)),
                         norm, len(cavs))


def _weighted_results(member_results: Mapping[str, list[ConceptResult]], weights: Mapping[str, float], *,
                      correction: str, min_cav_accuracy: float) -> list[ConceptResult]:
    """Run-by-run weighted TCAV scores over members, t-tested and corrected (see the module docstring)."""
    names = [m for m in member_results if weights[m] > 0]
    if names:
        w = {m: weights[m] / sum(weights[n] for n in names) for m in names}
    else:  # all weights 0: plain mean
        names = list(member_results)
        w = {m: 1.0 / len(names) for m in names}
    by_key = {m: {(r.class_index, r.concept): r for r in member_results[m]} for m in names}
    out = []
    for ref in member_results[names[0]]:
        rows = [(w[m], by_key[m][(ref.class_index, ref.concept)]) for m in names]
        scores = np.sum([wi * np.asarray(r.scores) for wi, r in rows], axis=0)
        rand = np.sum([wi * np.asarray(r.random_scores) for wi, r in rows], axis=0)
        acc = float(sum(wi * r.cav_accuracy for wi, r in rows))
        p = two_sided_pvalue(scores, rand)
        out.append(replace(ref, score_mean=float(scores.mean()), score_std=float(scores.std()),
                           random_mean=float(rand.mean()), random_std=float(rand.std()), p_value=p,
                           cav_accuracy=acc, cav_accurate=acc >= min_cav_accuracy,
                           scores=tuple(float(s) for s in scores), random_scores=tuple(float(s) for s in rand)))
    corrected = correct_pvalues([r.p_value for r in out], correction)
    return [replace(r, p_value_corrected=p, significant=bool(p < r.alpha and r.cav_accurate))
            for r, p in zip(out, corrected)]


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
            cavs[(m.name, name)] = _mean_cav(m.name, name, member_layers[m.name], runs)
    weights = {m.name: float(m.weight) for m in bundle.members}
    results = _weighted_results(member_results, weights, correction="bonferroni", min_cav_accuracy=min_cav_accuracy)
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


# --- per-image sensitivity -----------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptSensitivity:
    """``S_{C,k}(x)`` (Kim et al. 2018, eq. 1) of one image, weighted over members, with the
    concept's TCAV result for class ``k`` in the bank. ``float(s)`` is the weighted sensitivity."""

    concept: str
    class_index: int
    class_name: str
    sensitivity: float
    per_member: dict[str, float]
    tcav_score: float | None
    tcav_std: float | None
    p_value_corrected: float | None
    significant: bool
    cav_accuracy: float | None

    def __float__(self) -> float:
        return self.sensitivity

    @property
    def direction(self) -> str:
        """``"up"``, ``"down"`` or ``"none"``: how the concept moves this image's class logit."""
        return "up" if self.sensitivity > 0 else "down" if self.sensitivity < 0 else "none"

    def summary(self) -> str:
        """One sentence for a report; insignificant concepts are labelled as such."""
        here = f"for this image it pushes {self.class_name} {self.direction} (S={self.sensitivity:+.3g})"
        if self.tcav_score is None:
            return f"{self.concept}: not tested for {self.class_name} in the bank; {here}."
        tcav = f"TCAV {self.tcav_score:.2f}, p={self.p_value_corrected:.3g} corrected"
        if self.significant:
            return f"{self.concept} matters for {self.class_name} in general ({tcav}) and {here}."
        return (f"{self.concept} is not significant for {self.class_name} ({tcav}); its per-image sensitivity "
                f"({self.sensitivity:+.3g}) is not an explanation.")


def concept_sensitivity(bundle: Any, bank: ConceptBank, image: np.ndarray,
                        class_index: int | str) -> dict[str, ConceptSensitivity]:
    """Per-image conceptual sensitivity of every bank concept for ``class_index`` (index or name):
    ``sum_m w_m grad h_{m,k}(f_m(x)) . v_{m,C}`` over members ``m`` with the bank's weights and
    mean CAVs (Kim et al. 2018, eq. 1), plus the concept's weighted TCAV result for that class."""
    if not isinstance(bank, ConceptBank):
        raise ValueError(f"The 'bank' parameter must be a ConceptBank. Got {type(bank).__name__} instead.")
    if isinstance(class_index, str):
        if class_index not in bank.classes:
            raise ValueError(f"The 'class_index' parameter must be one of {list(bank.classes)} or an index. "
                             f"Got {class_index!r} instead.")
        class_index = bank.classes.index(class_index)
    if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) or not (
            0 <= int(class_index) < len(bank.classes)):
        raise ValueError(f"The 'class_index' parameter must be an integer in [0, {len(bank.classes)}). "
                         f"Got {class_index!r} instead.")
    k = int(class_index)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"The 'image' parameter must be an RGB uint8 (H, W, 3) array. "
                         f"Got dtype {image.dtype}, shape {image.shape} instead.")
    members = {m.name: m for m in bundle.members}
    for bm in bank.members:
        m = members.get(bm.name)
        if m is None or (bm.weights_sha256 and m.meta.get("weights_sha256") not in (None, bm.weights_sha256)):
            raise ValueError(f"The 'bank' was learned on member {bm.name!r} with weights {bm.weights_sha256}, which "
                             f"this bundle {'lacks' if m is None else 'has with other weights'}; learn the bank again.")
    total = sum(bm.weight for bm in bank.members) or 1.0
    per: dict[str, dict[str, float]] = {c: {} for c in bank.concepts}
    for bm in bank.members:
        explainer = TCAVExplainer(members[bm.name], layer=bm.layer, n_runs=2)
        grad = explainer.gradients([image], k)[0]
        for concept in bank.concepts:
            v = bank.cavs[(bm.name, concept)].vector
            if v.shape[0] != grad.shape[0]:
                raise ValueError(f"The 'bank' CAV of {concept!r} for member {bm.name!r} has {v.shape[0]} dimensions; "
                                 f"layer {bm.layer!r} now has {grad.shape[0]} (input size changed?). Learn it again.")
            per[concept][bm.name] = float(grad @ v.astype(np.float64))
    out = {}
    for concept, values in per.items():
        s = float(sum(bm.weight / total * values[bm.name] for bm in bank.members))
        r = bank.result(concept, k)
        out[concept] = ConceptSensitivity(
            concept, k, bank.classes[k], s if math.isfinite(s) else float("nan"), values,
            None if r is None else r.score_mean, None if r is None else r.score_std,
            None if r is None else r.p_value_corrected, bool(r is not None and r.significant),
            None if r is None else r.cav_accuracy)
    return out


__all__ = [
    "FAMILY_LAYERS",
    "BankMember",
    "ConceptBank",
    "ConceptSensitivity",
    "ConceptVector",
    "concept_layer",
    "concept_sensitivity",
    "dataset_pixel_spacing",
    "learn_concept_bank",
]
