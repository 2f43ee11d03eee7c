"""Model-free core of TCAV (Kim et al., "Interpretability Beyond Feature Attribution: Quantitative
Testing with Concept Activation Vectors (TCAV)", ICML 2018).

Everything here works on arrays: activations ``(N, D)`` of a layer, gradients ``(N, D)`` of one
class logit with respect to that layer. :mod:`skinlesion.explain.concepts` computes those from a
model and re-exports the public names.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

CORRECTIONS = ("bonferroni", "none")


def _check_number(parameter: str, value: object, *, low: float, high: float | None = None,
                  integer: bool = False, low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError naming ``parameter`` unless ``value`` is a number in the given range."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if not integer else int)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v > low if low_open else v >= low)
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        kind = "an integer" if integer else "a number"
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        rng = f"{lo}{low:g}, {high:g}{hi}" if high is not None else f"{lo}{low:g}, inf)"
        raise ValueError(f"The '{parameter}' parameter must be {kind} in {rng}. Got {value!r} instead.")


def _as_matrix(parameter: str, value: object, *, min_rows: int = 1) -> np.ndarray:
    """``value`` as a finite float64 ``(N, D)`` array with ``N >= min_rows``, or a ValueError."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise ValueError(
            f"The '{parameter}' parameter must be a 2-D array (n_examples, n_features) with at least "
            f"{min_rows} row(s). Got shape {arr.shape} instead."
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"The '{parameter}' parameter must be finite. Got NaN or infinite values.")
    return arr


class ConceptActivationVector:
    """A CAV: the unit normal of a linear classifier separating concept from random activations.

    Kim et al. 2018, §3.1: train a linear classifier on layer activations of concept examples
    (positives) and random / negative examples; the CAV ``v_C`` is the normal of its decision
    boundary, pointing towards the concept. Here the classifier is an L2-regularised logistic
    regression with balanced class weights (liblinear: fast and deterministic on small sets).

    Parameters:
        regularization: L2 penalty strength (``C = 1 / regularization`` in scikit-learn), > 0.
        cv: folds of the stratified cross-validation that estimates ``accuracy_`` (>= 2; reduced
            to the size of the smaller set when that is smaller).
        seed: seed of the fold shuffling and of the solver.
        max_iter: iterations of the solver.

    Learned attributes (after :meth:`fit`):
        vector_: ``(D,)`` unit vector towards the concept (all zeros if the classifier learned
            nothing, with a warning).
        intercept_: intercept of the classifier fitted on all examples, scaled to ``vector_``, so
            ``acts @ vector_ + intercept_`` is the signed distance to the decision boundary.
        accuracy_: cross-validated *balanced* accuracy, so 0.5 is chance whatever the set sizes.
            A CAV near 0.5 does not describe the concept at this layer; its TCAV score is noise.
        accuracy_std_: standard deviation of the balanced accuracy over folds.
        n_concept_, n_random_: number of examples of each set.
    """

    def __init__(self, regularization: float = 1.0, cv: int = 5, seed: int = 0, max_iter: int = 1000) -> None:
        self.regularization = regularization
        self.cv = cv
        self.seed = seed
        self.max_iter = max_iter

    def _validate_params(self) -> None:
        _check_number("regularization", self.regularization, low=0.0, low_open=True)
        _check_number("cv", self.cv, low=2, integer=True)
        _check_number("seed", self.seed, low=0, integer=True)
        _check_number("max_iter", self.max_iter, low=1, integer=True)

    def fit(self, concept_acts: np.ndarray, random_acts: np.ndarray) -> ConceptActivationVector:
        """Fit on concept activations ``(Nc, D)`` and random activations ``(Nr, D)``; returns self."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        self._validate_params()
        pos = _as_matrix("concept_acts", concept_acts, min_rows=2)
        neg = _as_matrix("random_acts", random_acts, min_rows=2)
        if pos.shape[1] != neg.shape[1]:
            raise ValueError(
                "The 'random_acts' parameter must have as many features as 'concept_acts' "
                f"({pos.shape[1]}). Got {neg.shape[1]} instead."
            )
        x = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(len(pos), dtype=int), np.zeros(len(neg), dtype=int)])

        def make() -> LogisticRegression:
            return LogisticRegression(C=1.0 / float(self.regularization), class_weight="balanced",
                                      solver="liblinear", max_iter=self.max_iter, random_state=int(self.seed))

        folds = StratifiedKFold(n_splits=min(int(self.cv), len(pos), len(neg)), shuffle=True,
                                random_state=int(self.seed))
        scores = []
        for train, test in folds.split(x, y):
            pred = make().fit(x[train], y[train]).predict(x[test])
            recalls = [np.mean(pred[y[test] == c] == c) for c in (0, 1)]
            scores.append(float(np.mean(recalls)))
        clf = make().fit(x, y)
        w = clf.coef_[0].astype(np.float64)
        norm = float(np.linalg.norm(w))
        if norm == 0.0 or not math.isfinite(norm):
            warnings.warn("The CAV classifier learned a zero normal: concept and random activations are "
                          "indistinguishable at this layer; its TCAV scores are 0.", RuntimeWarning, stacklevel=2)
            self.vector_, self.intercept_ = np.zeros_like(w), 0.0
        else:
            self.vector_, self.intercept_ = w / norm, float(clf.intercept_[0]) / norm
        self.accuracy_ = float(np.mean(scores))
        self.accuracy_std_ = float(np.std(scores))
        self.n_concept_, self.n_random_ = len(pos), len(neg)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "vector_"):
            raise RuntimeError("This ConceptActivationVector is not fitted yet. Call 'fit' with concept and "
                               "random activations before using it.")

    def decision_function(self, acts: np.ndarray) -> np.ndarray:
        """Signed distance ``(N,)`` of activations ``(N, D)`` along the CAV (positive = concept side)."""
        self._check_fitted()
        a = _as_matrix("acts", acts)
        if a.shape[1] != self.vector_.shape[0]:
            raise ValueError(f"The 'acts' parameter must have {self.vector_.shape[0]} features. "
                             f"Got {a.shape[1]} instead.")
        return a @ self.vector_ + self.intercept_

    def __repr__(self) -> str:
        return (f"ConceptActivationVector(regularization={self.regularization!r}, cv={self.cv!r}, "
                f"seed={self.seed!r}, max_iter={self.max_iter!r})")


def _cav_vector(cav: ConceptActivationVector | np.ndarray) -> np.ndarray:
    if isinstance(cav, ConceptActivationVector):
        cav._check_fitted()
        return cav.vector_
    v = np.asarray(cav, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise ValueError("The 'cav' parameter must be a fitted ConceptActivationVector or a finite 1-D "
                         f"vector. Got an array of shape {v.shape} instead.")
    return v


def directional_derivatives(gradients: np.ndarray, cav: ConceptActivationVector | np.ndarray) -> np.ndarray:
    """``S_{C,k}(x) = grad h_k(f(x)) . v_C`` (Kim et al. 2018, eq. 1) for each row of ``gradients``.

    ``gradients``: ``(N, D)`` gradients of class ``k``'s logit with respect to the layer
    activations of ``N`` examples; returns ``(N,)``.
    """
    v = _cav_vector(cav)
    g = _as_matrix("gradients", gradients)
    if g.shape[1] != v.shape[0]:
        raise ValueError(f"The 'gradients' parameter must have {v.shape[0]} columns, the dimension of the "
                         f"CAV. Got {g.shape[1]} instead.")
    return g @ v


def tcav_score(gradients: np.ndarray, cav: ConceptActivationVector | np.ndarray) -> float:
    """TCAV score (Kim et al. 2018, eq. 2): fraction of examples whose class-``k`` logit increases
    along the concept, ``|{x in X_k : S_{C,k}(x) > 0}| / |X_k|``.

    ``gradients`` are ``(N, D)`` gradients of the logit of the explained class ``k`` at the
    examples ``X_k`` (usually images of class ``k``), so the score depends on the class through
    them. Derivatives exactly 0 do not count as positive.
    """
    return float(np.mean(directional_derivatives(gradients, cav) > 0))


def two_sided_pvalue(concept_scores: Sequence[float], random_scores: Sequence[float]) -> float:
    """Two-sided Student t-test p-value between the TCAV scores of concept CAVs and of random CAVs
    (Kim et al. 2018, §3.2; ``scipy.stats.ttest_ind``). Two constant, equal samples give 1.0; two
    constant, different samples give 0.0."""
    from scipy.stats import ttest_ind

    a = np.asarray(concept_scores, dtype=np.float64)
    b = np.asarray(random_scores, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"The t-test needs at least 2 scores per group. Got {a.size} and {b.size} instead.")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # one constant group is fine for the pooled-variance test
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return float(ttest_ind(a, b).pvalue)


def correct_pvalues(p_values: Sequence[float], correction: str = "bonferroni") -> list[float]:
    """Multiple-comparison correction: Bonferroni ``min(1, p * m)`` over the ``m`` tests, or none."""
    if correction not in CORRECTIONS:
        raise ValueError(f"The 'correction' parameter must be one of {CORRECTIONS}. Got {correction!r} instead.")
    m = len(p_values)
    return [min(1.0, float(p) * m) if correction == "bonferroni" else float(p) for p in p_values]


@dataclass(frozen=True)
class ConceptResult:
    """TCAV of one concept for one class, over ``n_runs`` CAVs (Kim et al. 2018, §3.2).

    ``score_mean``/``score_std``: mean and standard deviation of the TCAV scores of the concept
    CAVs (one per random negative set); ``random_mean``/``random_std``: the same for random-vs-random
    CAVs. ``p_value`` is the two-sided t-test between the two; ``p_value_corrected`` after the
    multiple-comparison correction of the report. ``cav_accuracy`` is the mean cross-validated
    balanced accuracy of the concept CAVs and ``cav_accurate`` whether it reaches the explainer's
    ``min_cav_accuracy``: if not, the concept is not linearly separable from random at this layer.
    ``significant`` is ``p_value_corrected < alpha and cav_accurate``: a fixed set of images that
    is no more than a random sample still gives CAVs that agree with each other (they all follow
    its small sample-mean shift), and so can pass the t-test; the accuracy gate keeps such sets out
    (``min_cav_accuracy=0`` disables it). An insignificant concept's score is shown but must not be
    read as an explanation.
    """

    concept: str
    class_index: int
    score_mean: float
    score_std: float
    random_mean: float
    random_std: float
    p_value: float
    p_value_corrected: float
    significant: bool
    cav_accuracy: float
    cav_accurate: bool
    alpha: float
    n_runs: int
    n_concept_examples: int
    n_class_examples: int
    scores: tuple[float, ...] = field(repr=False, default=())
    random_scores: tuple[float, ...] = field(repr=False, default=())

    def summary(self) -> str:
        """One line: score, random baseline, p-value and verdict."""
        verdict = "significant" if self.significant else "NOT significant"
        if not self.significant and self.p_value_corrected < self.alpha:
            verdict += " (p below alpha, but the CAV is near chance)"
        line = (f"{self.concept} -> class {self.class_index}: TCAV {self.score_mean:.2f} ± {self.score_std:.2f} "
                f"(random {self.random_mean:.2f} ± {self.random_std:.2f}), p={self.p_value_corrected:.3g} "
                f"(corrected; raw {self.p_value:.3g}) {verdict} at alpha={self.alpha:g}; "
                f"CAV accuracy {self.cav_accuracy:.2f}")
        if not self.cav_accurate:
            line += " (near chance: the concept is not separable from random at this layer, score not meaningful)"
        return line


def fit_cav_runs(
    concept_acts: Mapping[str, np.ndarray],
    random_acts: np.ndarray,
    *,
    n_runs: int,
    n_random: int | None,
    regularization: float,
    cv: int,
    seed: int,
) -> tuple[dict[str, list[ConceptActivationVector]], list[ConceptActivationVector]]:
    """Fit ``n_runs`` CAVs per concept and ``n_runs`` random-vs-random CAVs (Kim et al. 2018, §3.2).

    Run ``i`` draws, from the random pool, a negative set ``N_i`` and a disjoint "random concept"
    ``R_i`` of ``n_random`` examples each (``None``: ``min(len(pool) // 2, 100)``); every concept is
    fitted against ``N_i`` and the random baseline is ``R_i`` vs ``N_i``. Deterministic in ``seed``.
    """
    pool = _as_matrix("random_acts", random_acts, min_rows=4)
    n = min(len(pool) // 2, 100) if n_random is None else n_random
    _check_number("n_random", n, low=2, integer=True)
    if 2 * n > len(pool):
        raise ValueError(f"The 'random_pool' parameter must hold at least 2 * n_random = {2 * n} examples "
                         f"(negatives and a disjoint random concept per run). Got {len(pool)} instead.")
    rng = np.random.default_rng(seed)
    draws = [(rng.permutation(len(pool))[: 2 * n], int(rng.integers(2**31 - 1))) for _ in range(n_runs)]
    concept_cavs: dict[str, list[ConceptActivationVector]] = {}
    for name, acts in concept_acts.items():
        a = _as_matrix(f"concepts[{name!r}]", acts, min_rows=2)
        concept_cavs[name] = [ConceptActivationVector(regularization, cv, s).fit(a, pool[idx[:n]])
                              for idx, s in draws]
    random_cavs = [ConceptActivationVector(regularization, cv, s).fit(pool[idx[n:]], pool[idx[:n]])
                   for idx, s in draws]
    return concept_cavs, random_cavs


def score_runs(
    class_index: int,
    gradients: np.ndarray,
    concept_cavs: Mapping[str, list[ConceptActivationVector]],
    random_cavs: list[ConceptActivationVector],
    *,
    alpha: float,
    min_cav_accuracy: float,
) -> list[ConceptResult]:
    """TCAV scores of every run for one class, t-tested against the random runs (uncorrected:
    ``p_value_corrected`` is the raw p-value until :func:`apply_correction`)."""
    rand = [tcav_score(gradients, c) for c in random_cavs]
    results = []
    for name, cavs in concept_cavs.items():
        scores = [tcav_score(gradients, c) for c in cavs]
        p = two_sided_pvalue(scores, rand)
        acc = float(np.mean([c.accuracy_ for c in cavs]))
        results.append(ConceptResult(
            concept=name, class_index=class_index, score_mean=float(np.mean(scores)),
            score_std=float(np.std(scores)), random_mean=float(np.mean(rand)), random_std=float(np.std(rand)),
            p_value=p, p_value_corrected=p, significant=p < alpha and acc >= min_cav_accuracy, cav_accuracy=acc,
            cav_accurate=acc >= min_cav_accuracy, alpha=alpha, n_runs=len(cavs),
            n_concept_examples=cavs[0].n_concept_, n_class_examples=len(gradients),
            scores=tuple(scores), random_scores=tuple(rand)))
    return results


def apply_correction(results: list[ConceptResult], correction: str) -> list[ConceptResult]:
    """Correct the p-values of all ``results`` together and recompute ``significant``
    (``p_value_corrected < alpha`` and ``cav_accurate``)."""
    from dataclasses import replace

    corrected = correct_pvalues([r.p_value for r in results], correction)
    return [replace(r, p_value_corrected=p, significant=p < r.alpha and r.cav_accurate)
            for r, p in zip(results, corrected)]
