"""Monte Carlo dropout and the entropy decomposition of predictive uncertainty.

* MC dropout: Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016. Dropout stays
  on at test time and the softmax is averaged over T stochastic passes.
* Decomposition (Depeweg et al., ICML 2018; Kendall & Gal, NeurIPS 2017): the predictive entropy
  ``H[E_t p_t]`` (total) splits into the expected entropy ``E_t H[p_t]`` (aleatoric, noise the model
  sees in the data) and the mutual information between prediction and weights
  ``H[E p] - E H[p]`` (epistemic, disagreement between the sampled networks; >= 0 by Jensen).

All entropies use the natural logarithm (nats); divide by ``log K`` (:meth:`MCResult.normalised`)
for values in [0, 1]. BatchNorm layers stay in eval mode during the passes, so their running
statistics are used and never updated; only dropout / drop-path layers are stochastic.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from skinlesion._params import positive_int
from skinlesion.models.registry import backbone_prefix, get_spec, stochastic_modules

if TYPE_CHECKING:  # pragma: no cover
    from skinlesion.ensemble.members import Member

QUANTITIES = ("predictive_entropy", "expected_entropy", "mutual_information")


class NotStochasticWarning(UserWarning):
    """The model has no active dropout: all MC samples are equal and the epistemic part is 0."""


# --------------------------------------------------------------------------- pure functions


def _check_probs(parameter: str, p: Any, min_ndim: int) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim < min_ndim or arr.size == 0:
        raise ValueError(
            f"The '{parameter}' parameter must be a non-empty array with at least {min_ndim} "
            f"dimensions (classes last). Got shape {arr.shape} instead."
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ValueError(f"The '{parameter}' parameter must hold finite probabilities >= 0.")
    sums = arr.sum(axis=-1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = float(sums.flat[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"The '{parameter}' parameter must hold probabilities summing to 1 over the last axis. "
            f"Got a row summing to {worst:.6g} instead."
        )
    return arr


def _check_weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(
            f"The 'weights' parameter must be {n} finite non-negative numbers with a positive sum "
            f"(one per sample). Got shape {w.shape} instead."
        )
    return w / w.sum()


def _entropy(p: np.ndarray) -> np.ndarray:
    """``-sum p log p`` over the last axis with ``0 log 0 = 0`` (no validation)."""
    safe = np.where(p > 0, p, 1.0)
    return -(p * np.log(safe)).sum(axis=-1)


def predictive_entropy(p: Any) -> np.ndarray:
    """Shannon entropy in nats of probabilities ``p`` ``(..., K)`` -> ``(...)``.

    Pass the MC mean ``E_t p_t`` ``(N, K)`` to get the total uncertainty ``H[E p]``
    (Depeweg et al. 2018).
    """
    return _entropy(_check_probs("p", p, 1))


def expected_entropy(samples: Any, weights: Any = None) -> np.ndarray:
    """Aleatoric part ``E_t H[p_t]`` in nats: samples ``(T, ..., K)`` -> ``(...)``.

    ``weights`` ``(T,)`` (normalised here) weight the samples, e.g. ensemble members; default uniform.
    """
    s = _check_probs("samples", samples, 2)
    w = _check_weights(weights, s.shape[0])
    return np.tensordot(w, _entropy(s), axes=1)


def mutual_information(samples: Any, weights: Any = None) -> np.ndarray:
    """Epistemic part ``H[E p] - E H[p]`` in nats: samples ``(T, ..., K)`` -> ``(...)``.

    The mutual information between the prediction and the model weights (Depeweg et al. 2018;
    Gal 2016, "BALD"). Non-negative by Jensen's inequality; floating-point negatives are clipped to 0.
    """
    s = _check_probs("samples", samples, 2)
    w = _check_weights(weights, s.shape[0])
    mean = np.tensordot(w, s, axes=1)
    return np.maximum(_entropy(mean) - np.tensordot(w, _entropy(s), axes=1), 0.0)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class MCResult:
    """MC-dropout predictions of N images over K classes from S stochastic samples.

    ``samples`` ``(S, N, K)`` per-pass probabilities and ``sample_weights`` ``(S,)`` (sum 1; uniform
    for one model, ``w_m / T`` for ensemble member m). ``mean_probs`` ``(N, K)``; the uncertainty
    arrays are ``(N,)`` in nats: ``predictive_entropy`` = ``expected_entropy`` (aleatoric) +
    ``mutual_information`` (epistemic). ``predicted_class_variance`` is the (weighted) variance over
    samples of the probability of the class predicted by ``mean_probs``. ``stochastic`` is False
    when no dropout layer was active: then every sample is identical and the epistemic part is 0.
    """

    samples: np.ndarray
    sample_weights: np.ndarray
    mean_probs: np.ndarray
    predictive_entropy: np.ndarray
    expected_entropy: np.ndarray
    mutual_information: np.ndarray
    predicted_class_variance: np.ndarray
    stochastic: bool
    stochastic_layers: tuple[str, ...]

    @classmethod
    def from_samples(
        cls,
        samples: Any,
        weights: Any = None,
        *,
        stochastic: bool = True,
        stochastic_layers: Sequence[str] = (),
    ) -> MCResult:
        """Summarise probabilities ``(S, N, K)`` (optionally weighted ``(S,)``)."""
        s = _check_probs("samples", samples, 3)
        if s.ndim != 3:
            raise ValueError(f"The 'samples' parameter must have shape (S, N, K). Got shape {s.shape} instead.")
        w = _check_weights(weights, s.shape[0])
        mean = np.tensordot(w, s, axes=1)
        total = _entropy(mean)
        aleatoric = np.tensordot(w, _entropy(s), axes=1)
        top = mean.argmax(axis=1)
        p_top = s[:, np.arange(s.shape[1]), top]  # (S, N)
        var = np.tensordot(w, (p_top - mean[np.arange(s.shape[1]), top]) ** 2, axes=1)
        return cls(
            samples=s,
            sample_weights=w,
            mean_probs=mean,
            predictive_entropy=total,
            expected_entropy=aleatoric,
            mutual_information=np.maximum(total - aleatoric, 0.0),
            predicted_class_variance=var,
            stochastic=bool(stochastic),
            stochastic_layers=tuple(stochastic_layers),
        )

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.samples.shape[2])

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class ``(N,)``: argmax of the mean probabilities."""
        return self.mean_probs.argmax(axis=1)

    @property
    def max_prob(self) -> np.ndarray:
        """Confidence ``(N,)``: the largest mean probability."""
        return self.mean_probs.max(axis=1)

    def normalised(self, quantity: str) -> np.ndarray:
        """``predictive_entropy``, ``expected_entropy`` or ``mutual_information`` divided by ``log K``."""
        if quantity not in QUANTITIES:
            raise ValueError(f"The 'quantity' parameter must be one of {set(QUANTITIES)}. Got {quantity!r} instead.")
        return getattr(self, quantity) / math.log(self.n_classes) if self.n_classes > 1 else getattr(self, quantity)


# --------------------------------------------------------------------------- dropout mode


def _has_running_stats(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, SyncBN, timm BatchNormAct2d
        return True
    return any(name in ("running_mean", "running_var") for name, _ in module.named_buffers(recurse=False))


def _head_rate(model: nn.Module, backbone_name: str) -> tuple[str, nn.Module, float]:
    # A wrapper (MetadataFusionNet) applies its own head dropout functionally, following its root
    # flag as timm's forward_head does; the backbone inside it is built without head dropout.
    head_name = "" if backbone_prefix(model) else get_spec(backbone_name).dropout.head_module
    if not head_name:
        return "", model, float(getattr(model, "drop_rate", 0.0) or 0.0)
    try:
        head = model.get_submodule(head_name)
    except AttributeError:
        raise ValueError(
            f"The 'model' parameter ({type(model).__name__}) has no module {head_name!r}, the head dropout "
            f"of backbone {backbone_name!r}: was it created with create_backbone({backbone_name!r})?"
        ) from None
    rate = getattr(head, "p", None)
    if rate is None:
        rate = getattr(head, "drop_rate", 0.0)
    return head_name, head, float(rate or 0.0)


def _is_applied(model: nn.Module, name: str) -> bool:
    """False for drop-path in a timm EfficientNet block without a residual (``has_skip`` False).

    timm builds a ``DropPath`` in every block but only applies it on the skip branch, so the first
    block of a stage (stride 2 or a channel change) never drops anything.
    """
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return getattr(parent, "has_skip", True) is not False


@contextmanager
def mc_dropout_mode(
    model: nn.Module, backbone_name: str, include_backbone: bool = True
) -> Iterator[tuple[str, ...]]:
    """Turn on the dropout of a registry model for MC dropout (Gal & Ghahramani 2016).

    Active inside the block: the head dropout (timm applies it functionally in ``forward_head``
    following the ``training`` flag of the model itself, or of the spec's ``head_module``; only that
    flag is set, not its children's; a metadata fusion wrapper's own head dropout, both metadata and
    fused features, follows its root flag the same way) and, with ``include_backbone``, the backbone's stochastic
    modules with rate > 0 (:func:`~skinlesion.models.registry.stochastic_modules`), except the
    drop-path of EfficientNet blocks without a skip connection, which timm never applies. Every module
    with running statistics (BatchNorm) is kept in eval mode. Yields the names of the active
    stochastic layers (``"head"`` for the head dropout; empty when nothing is stochastic). All
    ``training`` flags are restored on exit, even after an error.
    """
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        active: list[str] = []
        head_name, head, rate = _head_rate(model, backbone_name)
        if rate > 0:
            if head is model:
                model.training = True  # the root flag only: forward_head reads self.training
            else:
                head.train()
            active.append("head" if not head_name else f"head:{head_name}")
        if include_backbone:
            for name, module in stochastic_modules(model, backbone_name):
                if not _is_applied(model, name):
                    continue
                module.train()
                active.append(name)
        for module in model.modules():  # e.g. DenseNet's DenseLayer.train() also switched its BN on
            if _has_running_stats(module):
                module.eval()
        yield tuple(active)
    finally:
        for module, flag in saved:
            module.training = flag


# --------------------------------------------------------------------------- prediction


def _check_temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"The 'temperature' parameter must be a finite number > 0. Got {value!r} instead.")
    return float(value)


def _mc_log_probs(
    model: nn.Module,
    backbone_name: str,
    x: torch.Tensor,
    n_samples: int,
    temperature: float,
    include_backbone: bool,
    chunk: int | None,
    meta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Log-probabilities ``(T, N, K)`` (float64, CPU): the batch repeated T times, in chunks of rows.

    ``meta`` ``(N, D)``: encoded metadata of a fusion model, repeated with its images (``model(x, meta)``)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"The 'x' parameter must be a non-empty tensor (N, C, H, W). Got {shape} instead.")
    n = x.shape[0]
    if meta is not None and (not isinstance(meta, torch.Tensor) or meta.dim() != 2 or meta.shape[0] != n):
        shape = tuple(meta.shape) if isinstance(meta, torch.Tensor) else type(meta).__name__
        raise ValueError(f"The 'meta' parameter must be None or a tensor (N, D) with N = {n}. Got {shape} instead.")
    total = n * n_samples
    step = total if chunk is None else chunk
    outs = []
    with mc_dropout_mode(model, backbone_name, include_backbone) as active, torch.no_grad():
        for start in range(0, total, step):
            rows = torch.arange(start, min(start + step, total), device=x.device) % n  # sample-major
            batch = x.index_select(0, rows)
            out = model(batch) if meta is None else model(batch, meta.to(x.device).index_select(0, rows))
            outs.append(out.double().cpu())
    logits = torch.cat(outs)
    if logits.dim() != 2:
        raise ValueError(f"The model must return logits (N, K). Got shape {tuple(logits.shape)} instead.")
    return torch.log_softmax(logits / temperature, dim=-1).reshape(n_samples, n, -1), active


def _check_seed(seed: Any) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"The 'seed' parameter must be an integer or None. Got {seed!r} instead.")
    return None if seed is None else int(seed)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Fork the global RNGs (CPU and every CUDA device) and seed them; a no-op for ``None``."""
    if seed is None:
        yield
        return
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _varies(log_p: torch.Tensor) -> bool:
    """Whether the T samples ``(T, N, K)`` differ at all (True for T = 1: nothing to compare)."""
    return log_p.shape[0] == 1 or bool((log_p != log_p[:1]).any())


def _warn_not_stochastic(what: str, active: Sequence[str], consequence: str) -> None:
    if active:
        reason = f"its stochastic layers ({', '.join(active)}) did not change any output"
    else:
        reason = "no dropout is active (drop_rate 0 and no backbone stochastic modules, or include_backbone=False)"
    warnings.warn(
        f"{what}: {reason}. {consequence} Create the backbone with drop_rate > 0.",
        NotStochasticWarning,
        stacklevel=3,
    )


def mc_dropout_predict(
    model: nn.Module,
    backbone: str,
    x: torch.Tensor,
    n_samples: int = 20,
    temperature: float = 1.0,
    include_backbone: bool = True,
    seed: int | None = None,
    chunk: int | None = 256,
    meta: torch.Tensor | None = None,
) -> MCResult:
    """MC-dropout prediction (Gal & Ghahramani 2016) of a preprocessed batch ``x`` ``(N, C, H, W)``.

    The T = ``n_samples`` passes run batched: the batch is repeated T times along the batch axis
    and sent through the network in forwards of at most ``chunk`` rows (``None``: all ``T * N`` rows
    in one forward). Dropout masks are drawn per element and timm's drop-path per row, so every copy
    gets its own mask. ``temperature`` divides the logits before the softmax. ``seed`` makes the
    masks reproducible without touching the global RNG state (for a given ``chunk`` and device).
    Warns :class:`NotStochasticWarning` and returns ``stochastic=False`` when no dropout is active.
    ``meta`` ``(N, D)``: encoded metadata for a metadata fusion model (None: missing).
    """
    n_samples = positive_int("n_samples", n_samples)
    chunk = positive_int("chunk", chunk, allow_none=True)
    temperature = _check_temperature(temperature)
    seed = _check_seed(seed)
    get_spec(backbone)
    with _seeded(seed):
        log_p, active = _mc_log_probs(model, backbone, x, n_samples, temperature, include_backbone, chunk, meta)
    stochastic = bool(active) and _varies(log_p)
    if not stochastic:
        _warn_not_stochastic(
            f"MC dropout on {backbone}",
            active,
            "All samples are identical, so the mutual information (epistemic uncertainty) is 0.",
        )
    return MCResult.from_samples(log_p.exp().numpy(), stochastic=stochastic, stochastic_layers=active)


def _member_inputs(members: Sequence[Member], inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, Mapping):
        missing = [m.name for m in members if m.name not in inputs]
        if missing:
            raise ValueError(f"The 'inputs' mapping must have a tensor for every member. Missing: {missing}.")
        tensors = [inputs[m.name] for m in members]
    elif isinstance(inputs, torch.Tensor):
        raise ValueError(
            "The 'inputs' parameter must be RGB uint8 images (each member preprocesses them) or one "
            "preprocessed tensor per member (a list or a {name: tensor} mapping). Got a single tensor instead."
        )
    elif len(inputs) > 0 and all(isinstance(t, torch.Tensor) for t in inputs):
        if len(inputs) != len(members):
            raise ValueError(
                f"The 'inputs' parameter must hold one tensor per member ({len(members)}). Got {len(inputs)} instead."
            )
        tensors = list(inputs)
    else:
        if len(inputs) == 0:
            raise ValueError("The 'inputs' parameter must hold at least one image. Got none instead.")
        tensors = [m.preprocess(inputs, device=_device_of(m.model)) for m in members]
    sizes = {int(t.shape[0]) for t in tensors}
    if len(sizes) != 1:
        raise ValueError(f"The per-member inputs must hold the same number of images. Got sizes {sorted(sizes)}.")
    return tensors


def _member_meta(member: Member, metadata: Sequence[Mapping[str, Any] | None] | None, n: int) -> torch.Tensor | None:
    """Encoded metadata ``(n, D)`` for a fusion member (None entries: missing); None for other members."""
    encode = getattr(member.model, "encode_metadata", None)
    if metadata is None or encode is None:
        return None
    return encode([r if r is not None else {} for r in metadata], n)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def ensemble_mc_predict(
    members: Sequence[Member],
    inputs: Any,
    n_samples: int = 20,
    include_backbone: bool = True,
    seed: int | None = None,
    chunk: int | None = 256,
    metadata: Sequence[Mapping[str, Any] | None] | None = None,
    bias: Any = None,
) -> MCResult:
    """MC dropout over an ensemble: the weighted mixture of every member's T samples.

    ``inputs`` are RGB uint8 images ``(H, W, 3)`` (each member applies its own preprocessing), or
    preprocessed tensors ``(N, C, h, w)``, one per member (list in member order or ``{name: tensor}``).
    Member m's samples get weight ``w_m / T`` (weights normalised to sum 1) and its logits are divided
    by its ``temperature``. The mixture's mutual information therefore includes the disagreement
    between members as well as each member's dropout variability (Lakshminarayanan et al. 2017;
    Depeweg et al. 2018). The result holds ``M * T`` samples, member-major. ``metadata``: one record
    per image (``{"age": 55, "sex": "male", "site": "back"}``, None: missing) fed to metadata fusion
    members with their images; image-only members ignore it. ``bias``: per-class biases ``(K,)`` added
    to every sample's tempered logits (a bundle calibrated with biases, see
    :class:`~skinlesion.calibration.temperature.BiasedTemperatureScaler`).
    """
    members = list(members)
    if not members:
        raise ValueError("The 'members' parameter must hold at least one Member. Got none instead.")
    n_samples = positive_int("n_samples", n_samples)
    chunk = positive_int("chunk", chunk, allow_none=True)
    weights = np.array([float(m.weight) for m in members])
    if not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError(
            f"The member weights must be finite, >= 0 and have a positive sum. Got {weights.tolist()} instead."
        )
    weights = weights / weights.sum()
    seed = _check_seed(seed)
    tensors = _member_inputs(members, inputs)
    samples, layers, stochastic = [], [], False
    with _seeded(seed):
        for member, x in zip(members, tensors):
            temperature = _check_temperature(member.temperature)
            log_p, active = _mc_log_probs(
                member.model, member.backbone, x, n_samples, temperature, include_backbone, chunk,
                _member_meta(member, metadata, int(x.shape[0])),
            )
            if bias is not None:
                log_p = torch.log_softmax(log_p + torch.as_tensor(np.asarray(bias), dtype=log_p.dtype), dim=-1)
            samples.append(log_p.exp().numpy())
            layers.extend(f"{member.name}:{a}" for a in active)
            stochastic = stochastic or (bool(active) and _varies(log_p))
    if not stochastic:
        _warn_not_stochastic(
            "MC dropout on the ensemble",
            layers,
            "Each member's samples are identical, so the mutual information only measures the "
            "disagreement between members.",
        )
    return MCResult.from_samples(
        np.concatenate(samples),
        np.repeat(weights / n_samples, n_samples),
        stochastic=stochastic,
        stochastic_layers=layers,
    )


__all__ = [
    "MCResult",
    "NotStochasticWarning",
    "ensemble_mc_predict",
    "expected_entropy",
    "mc_dropout_mode",
    "mc_dropout_predict",
    "mutual_information",
    "predictive_entropy",
]
