"""Out-of-distribution scores as small estimators: ``fit`` on training images, ``score`` higher = more OOD.

Two read pooled penultimate features (:mod:`skinlesion.ood.features`), two read logits:

* :class:`MahalanobisScore`: distance to the nearest class mean under one covariance shared by the
  classes (Lee et al., "A simple unified framework for detecting out-of-distribution samples and
  adversarial attacks", NeurIPS 2018), the covariance Ledoit-Wolf shrunk because the features have
  about as many dimensions as there are training images.
* :class:`KNNScore`: distance to the k-th nearest training feature after L2 normalisation (Sun et
  al., "Out-of-distribution detection with deep nearest neighbors", ICML 2022).
* :class:`EnergyScore`: ``-T logsumexp(logits / T)`` (Liu et al., "Energy-based out-of-distribution
  detection", NeurIPS 2020).
* :class:`MaxSoftmaxScore`: ``-log max softmax`` (Hendrycks & Gimpel, ICLR 2017), the baseline.

Each is fitted on TRAINING images only; held-out images set the threshold (:mod:`skinlesion.ood.gate`).
Fitted parameters are split into JSON scalars (:meth:`OODScore.to_dict`) and arrays
(:meth:`OODScore.arrays`), so a gate can keep the arrays in a ``.npz`` beside ``bundle.json``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from skinlesion._params import positive_int

#: What each score reads from :class:`~skinlesion.ood.features.MemberFeatures`.
INPUTS = ("features", "logits")


class OODScore:
    """Base class: parameters in ``__init__``, ``fit`` returns self, fitted attributes end in ``_``."""

    name: ClassVar[str] = ""
    input: ClassVar[str] = "features"
    _array_attrs: ClassVar[tuple[str, ...]] = ()

    # -- checks ------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet: call fit first.")

    def _check_x(self, x: Any, *, fitting: bool = False) -> np.ndarray:
        a = np.asarray(x)
        what = "features" if self.input == "features" else "logits"
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1 or not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"The 'X' parameter must be a 2-D numeric array of {what} (N, D) with N, D >= 1. Got dtype {a.dtype} and shape {a.shape} instead.")
        if not np.isfinite(a).all():
            raise ValueError(f"The 'X' parameter holds NaN or infinite {what}.")
        if not fitting and a.shape[1] != self.n_features_in_:
            raise ValueError(
                f"The 'X' parameter must have {self.n_features_in_} columns ({what} of the model this "
                f"{type(self).__name__} was fitted on). Got {a.shape[1]} instead."
            )
        return a.astype(np.float64)

    # -- API ---------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        return {}

    def fit(self, X: Any, y: Any = None) -> OODScore:  # noqa: N803 - sklearn naming
        """Fit on training features/logits ``X`` ``(N, D)`` (``y``: class indices ``(N,)`` where needed)."""
        self.n_features_in_ = int(self._check_x(X, fitting=True).shape[1])
        return self

    def score(self, X: Any) -> np.ndarray:  # noqa: N803
        """``(N,)`` float64, higher = more out-of-distribution."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Name, parameters and fitted scalars (JSON); the fitted arrays are in :meth:`arrays`."""
        self._check_fitted()
        return {"name": self.name, "input": self.input, "params": self.get_params(), "n_features_in": self.n_features_in_}

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, as stored (their dtype is the one scoring uses)."""
        self._check_fitted()
        return {a.rstrip("_"): getattr(self, a) for a in self._array_attrs}

    @classmethod
    def from_dict(cls, d: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> OODScore:
        """Rebuild a fitted score from :meth:`to_dict` and :meth:`arrays` (see :func:`score_from_dict`)."""
        obj = cls(**d.get("params", {}))
        arrays = arrays or {}
        missing = [a.rstrip("_") for a in cls._array_attrs if a.rstrip("_") not in arrays]
        if missing:
            raise ValueError(f"The stored {cls.name!r} score lacks array(s) {missing}.")
        for a in cls._array_attrs:
            setattr(obj, a, np.asarray(arrays[a.rstrip("_")]))
        obj.n_features_in_ = int(d["n_features_in"])
        return obj


class MahalanobisScore(OODScore):
    """``min_k (x - mu_k)^T P (x - mu_k)``: class means ``mu_k``, shared precision ``P`` (Lee et al. 2018).

    ``shrinkage``: ``"ledoit-wolf"`` or a number in [0, 1]; the shared covariance of the
    class-centred training features is ``(1 - s) C + s trace(C)/D I``. Fitted: ``means_`` ``(K, D)``
    and ``precision_`` ``(D, D)``, float32; ``shrinkage_``; ``classes_`` (the class indices present).
    """

    name = "mahalanobis"
    input = "features"
    _array_attrs = ("means_", "precision_")

    def __init__(self, shrinkage: str | float = "ledoit-wolf") -> None:
        self.shrinkage = shrinkage

    def get_params(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}

    def fit(self, X: Any, y: Any = None) -> MahalanobisScore:  # noqa: N803
        from sklearn.covariance import ledoit_wolf

        s = self.shrinkage
        if not (s == "ledoit-wolf" or (isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s <= 1)):
            raise ValueError(f"The 'shrinkage' parameter must be 'ledoit-wolf' or a number in [0, 1]. Got {s!r} instead.")
        x = self._check_x(X, fitting=True)
        if y is None:
            raise ValueError("The 'y' parameter is required: MahalanobisScore uses one mean per class (training labels).")
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"The 'y' parameter must hold one integer class index per row of X ({x.shape[0]}). Got dtype {y.dtype} and shape {y.shape} instead.")
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        if s == "ledoit-wolf":
            cov, shrink = ledoit_wolf(centred, assume_centered=True)
        else:
            emp = centred.T @ centred / len(centred)
            shrink = float(s)
            cov = (1 - shrink) * emp + shrink * np.trace(emp) / emp.shape[0] * np.eye(emp.shape[0])
        self.means_ = means.astype(np.float32)
        self.precision_ = np.linalg.pinv(cov, hermitian=True).astype(np.float32)
        self.shrinkage_ = float(shrink)
        self.classes_ = classes.astype(np.int64)
        self.n_features_in_ = int(x.shape[1])
        return self

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "shrinkage": self.shrinkage_, "classes": self.classes_.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> MahalanobisScore:
        obj = super().from_dict(d, arrays)
        obj.shrinkage_ = float(d["shrinkage"])
        obj.classes_ = np.asarray(d["classes"], dtype=np.int64)
        return obj  # type: ignore[return-value]

    def score(self, X: Any) -> np.ndarray:  # noqa: N803
        self._check_fitted()
        x = self._check_x(X)
        p = self.precision_.astype(np.float64)
        mu = self.means_.astype(np.float64)
        xp = x @ p
        d = (xp * x).sum(axis=1)[:, None] - 2 * xp @ mu.T + ((mu @ p) * mu).sum(axis=1)[None, :]
        return d.min(axis=1)


class KNNScore(OODScore):
    """Distance to the ``k``-th nearest L2-normalised training feature (Sun et al. 2022).

    At most ``max_bank`` training features are kept (a random subset drawn with ``seed``), stored
    normalised as float16 in ``bank_`` ``(B, D)``; scores are computed from that stored bank.
    Defaults from ``bench/ood.py`` on the default bundle: with ``k`` about 10% of the bank
    (50 of 500, 100 of 1000, 200 of 2000) the detection was the same for every bank size, while
    small ``k`` (1-10) missed most synthetic lesions; Sun et al. also scale ``k`` with the bank.
    """

    name = "knn"
    input = "features"
    _array_attrs = ("bank_",)

    def __init__(self, k: int = 50, max_bank: int = 500, seed: int = 0) -> None:
        self.k = k
        self.max_bank = max_bank
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "max_bank": self.max_bank, "seed": self.seed}

    @staticmethod
    def _normalise(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def fit(self, X: Any, y: Any = None) -> KNNScore:  # noqa: N803
        k, max_bank = positive_int("k", self.k), positive_int("max_bank", self.max_bank)
        x = self._check_x(X, fitting=True)
        if len(x) > max_bank:
            x = x[np.sort(np.random.default_rng(self.seed).choice(len(x), max_bank, replace=False))]
        if k > len(x):
            raise ValueError(f"The 'k' parameter must be at most the number of training features ({len(x)}). Got {k} instead.")
        self.bank_ = self._normalise(x).astype(np.float16)
        self.n_features_in_ = int(x.shape[1])
        return self

    def _bank_float32(self) -> np.ndarray:
        """The float16 bank as float32, converted once per bank (4 ms a call for 500 x 1280 otherwise)."""
        cached = getattr(self, "_bank32", None)
        if cached is None or cached[0] is not self.bank_:
            cached = self._bank32 = (self.bank_, self.bank_.astype(np.float32))
        return cached[1]

    def score(self, X: Any, chunk: int = 1024) -> np.ndarray:  # noqa: N803
        self._check_fitted()
        q = self._normalise(self._check_x(X)).astype(np.float32)
        bank = self._bank_float32()
        k = min(int(self.k), len(bank))
        out = np.empty(len(q))
        for s in range(0, len(q), chunk):
            sim = q[s : s + chunk] @ bank.T
            kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]  # k-th largest cosine similarity
            out[s : s + chunk] = np.sqrt(np.maximum(2.0 - 2.0 * kth.astype(np.float64), 0.0))
        return out


class EnergyScore(OODScore):
    """Energy ``-T logsumexp(z / T)`` of the logits (Liu et al. 2020); nothing to learn but the class count."""

    name = "energy"
    input = "logits"

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def get_params(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    def fit(self, X: Any, y: Any = None) -> EnergyScore:  # noqa: N803
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"The 'temperature' parameter must be a number > 0. Got {t!r} instead.")
        return super().fit(X, y)  # type: ignore[return-value]

    def score(self, X: Any) -> np.ndarray:  # noqa: N803
        self._check_fitted()
        t = float(self.temperature)
        return -t * logsumexp(self._check_x(X) / t, axis=1)


class MaxSoftmaxScore(OODScore):
    """``-log max_k softmax(z)_k`` (Hendrycks & Gimpel 2017): the baseline; monotone in ``1 - MSP``
    without its saturation at probabilities near 1."""

    name = "msp"
    input = "logits"

    def score(self, X: Any) -> np.ndarray:  # noqa: N803
        self._check_fitted()
        z = self._check_x(X)
        return logsumexp(z, axis=1) - z.max(axis=1)


SCORES: dict[str, type[OODScore]] = {c.name: c for c in (MahalanobisScore, KNNScore, EnergyScore, MaxSoftmaxScore)}


def make_score(name: str, **params: Any) -> OODScore:
    """A new (unfitted) score by name, one of :data:`SCORES`."""
    if name not in SCORES:
        raise ValueError(f"The 'score' parameter must be one of {sorted(SCORES)}. Got {name!r} instead.")
    try:
        return SCORES[name](**params)
    except TypeError:
        raise ValueError(f"Unknown parameter(s) {sorted(params)} for score {name!r}; it takes {sorted(SCORES[name]().get_params())}.") from None


def score_from_dict(d: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> OODScore:
    """A fitted score from :meth:`OODScore.to_dict` and :meth:`OODScore.arrays`."""
    name = d.get("name")
    if name not in SCORES:
        raise ValueError(f"The stored score name must be one of {sorted(SCORES)}. Got {name!r} instead.")
    return SCORES[name].from_dict(d, arrays)


__all__ = [
    "INPUTS",
    "SCORES",
    "EnergyScore",
    "KNNScore",
    "MahalanobisScore",
    "MaxSoftmaxScore",
    "OODScore",
    "make_score",
    "score_from_dict",
]
