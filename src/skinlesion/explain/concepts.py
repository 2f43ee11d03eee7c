"""Testing with Concept Activation Vectors (TCAV; Kim et al., ICML 2018) for the lesion classifiers.

A concept (``"multicolour"``, ``"irregular_border"``, or any folder of example images) is turned
into a CAV, the normal of a linear classifier separating the concept's layer activations from
random ones; the TCAV score of class ``k`` is the fraction of class-``k`` images whose class-``k``
logit increases along the CAV. Significance (Kim et al. §3.2): ``n_runs`` CAVs against different
random negative sets are compared with ``n_runs`` random-vs-random CAVs by a two-sided t-test,
Bonferroni-corrected over the concepts of a report. A concept is reported significant only if
its CAVs also beat chance on held-out examples (``min_cav_accuracy``; see :class:`ConceptResult`).

Layers (``layer``):

* ``"pooled"`` (default): the input of the classifier, ``forward_head(feats, pre_logits=True)``
  (for the registered backbones, the global average of ``forward_features``), with logits from
  ``model.get_classifier()``. With a linear classifier the gradient of a logit with respect to
  this layer is the classifier's weight row, the same for every image, so each CAV's score is 0
  or 1 and the mean over runs is the fraction of CAVs that raise the class logit.
* ``"features"``: the ``forward_features`` map, flattened. Average pooling is linear, so this has
  the same limitation as ``"pooled"`` for a pool + linear head.
* a module name (e.g. ``"layer3"`` of a ResNet): that module's output, flattened, read with a
  forward hook. Layers below the last block give image-dependent derivatives, as in the paper.

Concept sources: :func:`concept_examples_from_folders` (user folders, one per concept, plus
``random``) and :func:`concepts_from_measurements` (ABCDE measurements, :data:`DEFAULT_ABCDE_RULES`).
"""

from __future__ import annotations

import math
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from skinlesion.errors import DataError
from skinlesion.explain._tcav_stats import (
    CORRECTIONS,
    ConceptActivationVector,
    ConceptResult,
    _check_number,
    apply_correction,
    correct_pvalues,
    directional_derivatives,
    fit_cav_runs,
    score_runs,
    tcav_score,
    two_sided_pvalue,
)

Images = Union[Sequence[np.ndarray], torch.Tensor]
"""RGB uint8 ``(H, W, 3)`` images of any size, or an already preprocessed model input tensor."""

LAYERS = ("pooled", "features")
RANDOM_FOLDER = "random"

# Thresholds of the default ABCDE concepts (see DEFAULT_ABCDE_RULES).
ASYMMETRIC_AXES = 2
COMPACTNESS_THRESHOLD = 1.5
BORDER_IRREGULARITY_THRESHOLD = 0.05
MULTICOLOUR_MIN_COLOURS = 3
LARGE_DIAMETER_MM = 6.0


# --- concepts from ABCDE measurements -------------------------------------------------------------


def _number(m: Mapping[str, Any], key: str) -> float | None:
    v = m.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"The measurement {key!r} must be a number or None. Got {v!r} instead.")
    return None if math.isnan(float(v)) else float(v)


def rule_asymmetric(m: Mapping[str, Any]) -> bool | None:
    """``asymmetric_axes`` (0-2, ABCD rule A score; Stolz et al. 1994) == 2; missing -> unknown."""
    v = _number(m, "asymmetric_axes")
    if v is not None and v not in (0, 1, 2):
        raise ValueError(f"The measurement 'asymmetric_axes' must be 0, 1 or 2. Got {m['asymmetric_axes']!r} instead.")
    return None if v is None else v == ASYMMETRIC_AXES


def rule_irregular_border(m: Mapping[str, Any]) -> bool | None:
    """``compactness`` (``P^2 / (4 pi A)``, 1 for a disc) > 1.5; without it, ``border_irregularity``
    (``1 - P_hull / P``, 0 when convex) > 0.05; neither -> unknown. Both thresholds depend on how
    the perimeter is estimated: recalibrate them on the measurement code in use."""
    c = _number(m, "compactness")
    if c is not None:
        return c > COMPACTNESS_THRESHOLD
    b = _number(m, "border_irregularity")
    return None if b is None else b > BORDER_IRREGULARITY_THRESHOLD


def rule_multicolour(m: Mapping[str, Any]) -> bool | None:
    """``colours`` (names of the dermoscopic colours present) holds >= 3 distinct colours."""
    v = m.get("colours")
    if v is None:
        return None
    if isinstance(v, str) or not isinstance(v, (Sequence, set, frozenset)):
        raise ValueError(f"The measurement 'colours' must be a list of colour names. Got {v!r} instead.")
    return len(set(v)) >= MULTICOLOUR_MIN_COLOURS


def rule_large(m: Mapping[str, Any]) -> bool | None:
    """``diameter_mm`` > 6 mm (ABCDE "D"); None (no pixel spacing known) -> unknown."""
    d = _number(m, "diameter_mm")
    return None if d is None else d > LARGE_DIAMETER_MM


Rule = Callable[[Mapping[str, Any]], Union[bool, None]]

DEFAULT_ABCDE_RULES: Mapping[str, Rule] = MappingProxyType({
    "asymmetric": rule_asymmetric,
    "irregular_border": rule_irregular_border,
    "multicolour": rule_multicolour,
    "large": rule_large,
})
"""Concepts from ABCDE measurement dicts, keys: ``asymmetric_axes`` (int 0-2), ``compactness``
(float) or ``border_irregularity`` (float), ``colours`` (list of str), ``diameter_mm`` (float or
None). A missing key or None/NaN makes the image's concept unknown (excluded)."""


def concepts_from_measurements(
    images: Sequence[Any],
    measurements: Sequence[Mapping[str, Any]],
    rules: Mapping[str, Rule] | None = None,
) -> dict[str, list[Any]]:
    """Positive examples of each concept: ``{name: [image for which rules[name](m) is True]}``.

    ``rules`` map a concept name to a function of one measurement dict returning True (concept
    present), False (absent) or None (unknown: excluded); default :data:`DEFAULT_ABCDE_RULES`.
    Every rule gets an entry, possibly empty. Use the returned sets as ``concepts`` and a pool of
    other images as ``random_pool`` of :meth:`TCAVExplainer.explain`.
    """
    rules = DEFAULT_ABCDE_RULES if rules is None else rules
    if not isinstance(rules, Mapping) or not rules or not all(callable(r) for r in rules.values()):
        raise ValueError(f"The 'rules' parameter must be a non-empty mapping of concept name to callable. "
                         f"Got {rules!r} instead.")
    if len(images) != len(measurements):
        raise ValueError(f"The 'measurements' parameter must hold one dict per image ({len(images)}). "
                         f"Got {len(measurements)} instead.")
    out: dict[str, list[Any]] = {name: [] for name in rules}
    for i, (image, m) in enumerate(zip(images, measurements)):
        if not isinstance(m, Mapping):
            raise ValueError(f"The 'measurements' parameter must hold dicts. Got {type(m).__name__} at index {i}.")
        for name, rule in rules.items():
            verdict = rule(m)
            if verdict is None:
                continue
            if not isinstance(verdict, (bool, np.bool_)):
                raise TypeError(f"Concept rule {name!r} must return True, False or None. "
                                f"Got {verdict!r} for measurement {i}.")
            if verdict:
                out[name].append(image)
    return out


# --- concepts from folders ------------------------------------------------------------------------


def concept_examples_from_folders(root: str | Path, *, on_error: str = "raise") -> dict[str, list[np.ndarray]]:
    """Read ``root/<concept>/**/*.{jpg,jpeg,png,bmp,tif,tiff}`` as RGB uint8 arrays, one entry per
    subfolder (sorted by name; files sorted by path; hidden files and folders ignored).

    A subfolder named ``random`` holds random counterexamples (Kim et al. 2018 use random images
    of the same domain): pop it and pass it as ``random_pool``. Unreadable images raise a
    :class:`DataError` listing them all (``on_error="raise"``) or are skipped with a warning that
    lists them (``on_error="skip"``); a concept folder without images is an error.
    """
    from PIL import Image

    from skinlesion.data.readers import walk_images

    if on_error not in ("raise", "skip"):
        raise ValueError(f"The 'on_error' parameter must be one of ('raise', 'skip'). Got {on_error!r} instead.")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Concept folder root not found: {root} (expected one subfolder per concept).")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"No concept subfolders in {root}: expected {root}/<concept>/<images>.")
    out: dict[str, list[np.ndarray]] = {}
    bad: list[str] = []
    for folder in folders:
        files, _ = walk_images(folder)
        if not files:
            raise DataError(f"Concept folder {folder} has no images (.jpg/.jpeg/.png/.bmp/.tif/.tiff).")
        out[folder.name] = []
        for f in files:
            try:
                with Image.open(f) as im:
                    out[folder.name].append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            except Exception as exc:  # noqa: BLE001 - any decoder failure is reported by name
                bad.append(f"{f} ({type(exc).__name__}: {exc})")
    if bad and on_error == "raise":
        raise DataError(f"{len(bad)} unreadable concept image(s) under {root}:\n  " + "\n  ".join(bad))
    if bad:
        warnings.warn(f"Skipped {len(bad)} unreadable concept image(s): " + "; ".join(bad), UserWarning, stacklevel=2)
    empty = [name for name, ims in out.items() if not ims]
    if empty:
        raise DataError(f"Concept folder(s) {empty} under {root} have no readable images.")
    return out


# --- the explainer ---------------------------------------------------------------------------------


class TCAVExplainer:
    """TCAV with significance testing for a timm classifier (Kim et al., ICML 2018).

    Parameters:
        model: a timm model (``forward_features``/``forward_head``/``get_classifier``), or an
            ensemble :class:`~skinlesion.ensemble.members.Member` (its model and preprocessing).
        backbone: registered backbone name whose preprocessing (``data_config``) turns RGB images
            into model input; not needed for a Member or when images are given as tensors.
        layer: ``"pooled"``, ``"features"`` or a module name (see the module docstring).
        input_size: (H, W) override of the preprocessing resolution.
        n_runs: CAVs per concept and random-vs-random CAVs (>= 2; the paper uses many, e.g. 10-50).
        n_random: size of each random negative set; None: ``min(len(random_pool) // 2, 100)``.
        alpha: significance level after correction; correction: ``"bonferroni"`` or ``"none"``.
        regularization, cv: of each :class:`ConceptActivationVector`.
        min_cav_accuracy: concepts whose CAVs' mean balanced accuracy is below this are flagged
            (``cav_accurate=False``) and never reported significant (0 disables the gate).
        batch_size: images per forward/backward pass; seed: seeds every random choice.
        device: where the model runs; None: the device of its parameters.

    After :meth:`explain`, ``cavs_`` (concept -> list of CAVs) and ``random_cavs_`` hold the CAVs.
    """

    def __init__(self, model: nn.Module | Any, backbone: str | None = None, *, layer: str = "pooled",
                 input_size: tuple[int, int] | None = None, n_runs: int = 10, n_random: int | None = None,
                 alpha: float = 0.05, correction: str = "bonferroni", regularization: float = 1.0, cv: int = 5,
                 min_cav_accuracy: float = 0.6, batch_size: int = 32, seed: int = 0,
                 device: str | torch.device | None = None) -> None:
        from skinlesion.ensemble.members import Member

        self.member = model if isinstance(model, Member) else None
        self.model = model.model if isinstance(model, Member) else model
        if not isinstance(self.model, nn.Module):
            raise ValueError("The 'model' parameter must be a torch nn.Module or a Member. "
                             f"Got {type(model).__name__} instead.")
        self.backbone = self.member.backbone if self.member is not None and backbone is None else backbone
        modules = {name for name, _ in self.model.named_modules() if name}
        if not isinstance(layer, str) or (layer not in LAYERS and layer not in modules):
            raise ValueError(f"The 'layer' parameter must be one of {LAYERS} or a module name of the model. "
                             f"Got {layer!r} instead.")
        _check_number("n_runs", n_runs, low=2, integer=True)
        if n_random is not None:
            _check_number("n_random", n_random, low=2, integer=True)
        _check_number("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
        if correction not in CORRECTIONS:
            raise ValueError(f"The 'correction' parameter must be one of {CORRECTIONS}. Got {correction!r} instead.")
        _check_number("min_cav_accuracy", min_cav_accuracy, low=0.0, high=1.0)
        _check_number("batch_size", batch_size, low=1, integer=True)
        _check_number("seed", seed, low=0, integer=True)
        if input_size is not None and (
            not isinstance(input_size, (tuple, list)) or len(input_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)
        ):
            raise ValueError("The 'input_size' parameter must be a (height, width) pair of positive integers. "
                             f"Got {input_size!r} instead.")
        ConceptActivationVector(regularization, cv, seed)._validate_params()
        self.layer, self.input_size, self.n_runs, self.n_random = layer, input_size, n_runs, n_random
        self.alpha, self.correction, self.regularization, self.cv = alpha, correction, regularization, cv
        self.min_cav_accuracy, self.batch_size, self.seed = min_cav_accuracy, batch_size, seed
        param = next(self.model.parameters(), None)
        self.device = torch.device(device) if device is not None else (param.device if param is not None else
                                                                       torch.device("cpu"))
        self._transform = self._make_transform()

    def _make_transform(self) -> Callable[[list[np.ndarray]], torch.Tensor] | None:
        """RGB uint8 images -> normalised ``(N, 3, h, w)`` batch, or None without preprocessing."""
        from skinlesion.data.transforms import images_to_batch, preprocessing_transform
        from skinlesion.models.registry import data_config

        if self.member is not None and self.input_size is None:
            return self.member.preprocess
        if self.member is not None:
            p = dict(self.member.preprocessing)
        elif self.backbone is not None:
            p = data_config(self.backbone, self.input_size)
        else:
            return None
        tf = preprocessing_transform(p, self.input_size)
        return lambda images: images_to_batch(images, tf)

    # -- model plumbing --

    def _batches(self, images: Images, parameter: str, min_count: int = 1) -> Iterator[torch.Tensor]:
        n = len(images)
        if n < min_count:
            raise ValueError(f"The '{parameter}' parameter must hold at least {min_count} image(s). Got {n} instead.")
        if isinstance(images, torch.Tensor):
            for i in range(0, n, self.batch_size):
                yield images[i:i + self.batch_size].to(self.device, torch.float32)
            return
        if self._transform is None:
            raise ValueError(f"The 'backbone' parameter must name a registered backbone to preprocess the RGB "
                             f"images of '{parameter}'. Got None (pass a backbone or a Member, or tensors).")
        for i in range(0, n, self.batch_size):
            batch = []
            for j in range(i, min(i + self.batch_size, n)):
                im = np.asarray(images[j])
                if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                    raise ValueError(f"The '{parameter}' parameter must hold RGB uint8 (H, W, 3) images. "
                                     f"Got dtype {im.dtype}, shape {im.shape} at index {j}.")
                batch.append(im)
            yield self._transform(batch).to(self.device)

    @contextmanager
    def _eval(self, grad: bool) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.set_grad_enabled(grad):
                yield
        finally:
            self.model.train(was_training)

    def _layer_and_logits(self, x: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer activations (a leaf requiring grad when ``grad``) and, when ``grad``, the logits."""
        m = self.model
        if self.layer in LAYERS:
            feats = m.forward_features(x)
            acts = feats if self.layer == "features" else m.forward_head(feats, pre_logits=True)
            if not grad:
                return acts, None
            leaf = acts.detach().requires_grad_(True)
            if self.layer == "features":
                return leaf, m.forward_head(leaf)
            logits = m.get_classifier()(leaf)
            ref = m.forward_head(feats.detach())
            if logits.shape != ref.shape or not torch.allclose(logits, ref, rtol=1e-4, atol=1e-4):
                raise ValueError("The 'layer' parameter 'pooled' needs get_classifier()(forward_head(f, "
                                 "pre_logits=True)) == forward_head(f), which this model breaks; use "
                                 "layer='features' or a module name instead.")
            return leaf, logits
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"The 'layer' parameter must name a module that outputs a tensor. "
                                 f"{self.layer!r} outputs {type(output).__name__}.")
            out = output.detach().requires_grad_(True) if grad else output
            captured.append(out)
            return out

        handle = m.get_submodule(self.layer).register_forward_hook(hook)
        try:
            logits = m(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(f"The 'layer' parameter must name a module called once per forward pass. "
                             f"{self.layer!r} was called {len(captured)} times.")
        return captured[0], (logits if grad else None)

    def activations(self, images: Images) -> np.ndarray:
        """Layer activations ``(N, D)`` (flattened), one forward pass per batch."""
        return self._activations(images, "images", 1)

    def _activations(self, images: Images, parameter: str, min_count: int) -> np.ndarray:
        with self._eval(grad=False):
            return np.concatenate([self._layer_and_logits(x, grad=False)[0].flatten(1).double().cpu().numpy()
                                   for x in self._batches(images, parameter, min_count)])

    def gradients(self, images: Images, class_index: int) -> np.ndarray:
        """Gradients ``(N, D)`` of logit ``class_index`` w.r.t. the layer, one backward per batch
        (the model is in eval mode, so each image's logit depends on its own activations only)."""
        _check_number("class_index", class_index, low=0, integer=True)
        out = []
        with self._eval(grad=True):
            for x in self._batches(images, "class_images"):
                leaf, logits = self._layer_and_logits(x, grad=True)
                logits = typing.cast(torch.Tensor, logits)
                if class_index >= logits.shape[1]:
                    raise ValueError(f"The 'class_index' parameter must be below the model's {logits.shape[1]} "
                                     f"classes. Got {class_index} instead.")
                (g,) = torch.autograd.grad(logits[:, class_index].sum(), leaf)
                out.append(g.flatten(1).double().cpu().numpy())
        return np.concatenate(out)

    # -- TCAV --

    def explain(self, class_index: int, class_images: Images, concepts: Mapping[str, Images],
                random_pool: Images) -> list[ConceptResult]:
        """TCAV of every concept for class ``class_index`` over ``class_images`` (usually images of
        that class), with ``n_runs`` CAVs per concept against negatives from ``random_pool``.
        p-values are corrected over the concepts; results keep the order of ``concepts``."""
        return self.explain_classes({class_index: class_images}, concepts, random_pool)

    def explain_classes(self, class_images: Mapping[int, Images], concepts: Mapping[str, Images],
                        random_pool: Images) -> list[ConceptResult]:
        """:meth:`explain` for several classes at once: activations and CAVs are computed once,
        gradients once per class; p-values are corrected over all (class, concept) tests."""
        if not isinstance(class_images, Mapping) or not class_images:
            raise ValueError("The 'class_images' parameter must be a non-empty mapping of class index to "
                             f"images. Got {type(class_images).__name__} of length {len(class_images)} instead.")
        if not isinstance(concepts, Mapping) or not concepts:
            raise ValueError("The 'concepts' parameter must be a non-empty mapping of name to images. "
                             f"Got {type(concepts).__name__} of length {len(concepts)} instead.")
        if RANDOM_FOLDER in concepts:
            raise ValueError(f"The 'concepts' parameter must not contain {RANDOM_FOLDER!r}: pass those images as "
                             "'random_pool' (concepts.pop('random')).")
        grads = {k: self.gradients(ims, k) for k, ims in class_images.items()}
        pool = self._activations(random_pool, "random_pool", 4)
        acts = {name: self._activations(ims, f"concepts[{name!r}]", 2) for name, ims in concepts.items()}
        self.cavs_, self.random_cavs_ = fit_cav_runs(
            acts, pool, n_runs=self.n_runs, n_random=self.n_random, regularization=self.regularization,
            cv=self.cv, seed=self.seed)
        results = [r for k, g in grads.items() for r in score_runs(
            int(k), g, self.cavs_, self.random_cavs_, alpha=self.alpha, min_cav_accuracy=self.min_cav_accuracy)]
        return apply_correction(results, self.correction)


def tcav_report(results: Sequence[ConceptResult]) -> str:
    """A plain-text report, one line per result (:meth:`ConceptResult.summary`), significant first."""
    if not results:
        return "No TCAV results."
    ordered = sorted(results, key=lambda r: (not r.significant, r.class_index, r.p_value_corrected))
    head = (f"TCAV (Kim et al. 2018): {len(results)} test(s), {results[0].n_runs} runs each, "
            f"alpha={results[0].alpha:g} after correction.")
    return "\n".join([head, *(r.summary() for r in ordered)])


__all__ = [
    "DEFAULT_ABCDE_RULES",
    "LAYERS",
    "ConceptActivationVector",
    "ConceptResult",
    "TCAVExplainer",
    "concept_examples_from_folders",
    "concepts_from_measurements",
    "correct_pvalues",
    "directional_derivatives",
    "tcav_report",
    "tcav_score",
    "two_sided_pvalue",
]
