"""The out-of-distribution gate: "this image does not look like the dermoscopic images the model was trained on".

A score from :mod:`skinlesion.ood.scores` is fitted on the members' TRAINING images
(:func:`skinlesion.ensemble.triage.fit_ood_gate` for a bundle); its threshold
is the ``quantile`` of the scores of held-out in-distribution images (the validation split, never
test), so that at most ``1 - quantile`` of them are gated (``score > threshold_``). A gated image
still gets probabilities, but no diagnosis without the warning.

**Several members.** One score is fitted per member (each on its own features); an image's gate
score is the mean of the members' scores (``members=None``), or of the named members only. With
members of one architecture the raw scores share a scale (kNN: a cosine distance in [0, 2]).

**Several scores.** ``score="mahalanobis+knn"`` combines scores that catch different shifts: each
component (averaged over the members) is standardised on the held-out images, ``(s - median) /
(q - median)`` with ``q`` its ``quantile`` there, and the gate score is the maximum over the
components (close to gating when any one of them would); the threshold is then the held-out
``quantile`` of that maximum, so the gated fraction stays at most ``1 - quantile``.

**Storage.** :meth:`OODGate.to_dict` is JSON for ``bundle.json`` (score, parameters, threshold, how
it was fitted); the fitted arrays (kNN: a float16 bank of at most ``max_bank`` normalised features
per member; Mahalanobis: float32 class means and a D x D precision) go to an ``.npz`` file beside
it (:meth:`OODGate.save` / :meth:`OODGate.load`), its sha256 and size recorded in the dict. For the
default bundle (2 members, 1280 features) the kNN gate stores 2 x 500 x 1280 float16 = 2.56 MB
plus under 1 kB of JSON; a Mahalanobis one 13.2 MB (``bench/results/ood_default_bundle.json``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion._hashing import sha256_file
from skinlesion.ood.features import MemberFeatures
from skinlesion.ood.scores import OODScore, make_score, score_from_dict

log = logging.getLogger(__name__)
ARRAYS_FILE = "ood_gate.npz"


class OODGate:
    """A score per member and a threshold fitted on held-out in-distribution images.

    Parameters: ``score`` (a name of :data:`~skinlesion.ood.scores.SCORES`, or names joined by ``+``),
    ``quantile`` in (0, 1] (gate at most ``1 - quantile`` of the held-out images), ``members`` (names
    of the members whose scores are averaged; None: all), ``params`` (the score's parameters; for a
    combination ``{name: params}``).
    Fitted: ``members_``, ``components_`` (score names), ``scorers_`` (``[member][component]``),
    ``standardise_`` (``{component: (loc, scale)}``, combinations only), ``threshold_``,
    ``heldout_gated_fraction_``, ``n_train_``, ``n_heldout_``; ``provenance_`` (a dict the fitting code may fill).
    """

    def __init__(
        self, score: str = "knn", *, quantile: float = 0.95, members: Sequence[str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.score_name = score
        self.quantile = quantile
        self.members = members
        self.params = params

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("This OODGate is not fitted yet: call fit first (or skinlesion.ensemble.triage.fit_ood_gate for a bundle).")

    def _components(self) -> list[tuple[str, dict[str, Any]]]:
        """``[(score name, its params)]`` from ``score`` and ``params``."""
        names = str(self.score_name).split("+")
        for n in names:
            make_score(n)  # names the valid scores when n is none
        if len(set(names)) != len(names):
            raise ValueError(f"The 'score' parameter names a score twice. Got {self.score_name!r} instead.")
        params = dict(self.params or {})
        if len(names) == 1:
            return [(names[0], params)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(f"The 'params' parameter of a combined score must be {{score name: params}} for {names}. Got keys {unknown} instead.")
        return [(n, dict(params.get(n, {}))) for n in names]

    def _select(self, outputs: Sequence[MemberFeatures], names: Sequence[str], what: str) -> list[MemberFeatures]:
        by_name = {o.member: o for o in outputs}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"The '{what}' parameter lacks the outputs of member(s) {missing}; it has {sorted(by_name)}.")
        sizes = {len(by_name[n]) for n in names}
        if len(sizes) != 1:
            raise ValueError(f"The '{what}' parameter holds different numbers of images per member: {sorted(sizes)}.")
        return [by_name[n] for n in names]

    def fit(
        self, train: Sequence[MemberFeatures], heldout: Sequence[MemberFeatures], y_train: Any = None
    ) -> OODGate:
        """Fit the members' scores on ``train`` (TRAINING images; ``y_train`` their class indices, for
        Mahalanobis) and the threshold on ``heldout`` (in-distribution images not trained on)."""
        q = self.quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ValueError(f"The 'quantile' parameter must be a number in (0, 1]. Got {q!r} instead.")
        names = list(self.members) if self.members is not None else [o.member for o in train]
        if not names:
            raise ValueError("The 'train' parameter holds no member outputs.")
        components = self._components()
        fitted = []
        for out in self._select(train, names, "train"):
            fitted.append([make_score(c, **p).fit(getattr(out, make_score(c).input), y_train) for c, p in components])
        self.scorers_, self.members_ = fitted, names
        self.components_ = [c for c, _ in components]
        self.standardise_: dict[str, tuple[float, float]] = {}
        raw = self._component_scores(self._select(heldout, names, "heldout"))
        if len(components) > 1:
            for c, r in zip(self.components_, raw, strict=True):
                loc = float(np.median(r))
                self.standardise_[c] = (loc, max(float(np.quantile(r, q)) - loc, 1e-12))
        scores = self._combine(raw)
        self.threshold_ = float(np.quantile(scores, q, method="higher"))
        self.heldout_gated_fraction_ = float(np.mean(scores > self.threshold_))
        self.n_train_ = len(self._select(train, names, "train")[0])
        self.n_heldout_ = int(len(scores))
        self.provenance_: dict[str, Any] = {}
        return self

    def _component_scores(self, outputs: Sequence[MemberFeatures]) -> np.ndarray:
        """``(C, N)``: per component the mean of the members' scores."""
        per_member = [
            [s.score(getattr(out, s.input)) for s in scorers] for scorers, out in zip(self.scorers_, outputs, strict=True)
        ]
        return np.mean(np.asarray(per_member, dtype=np.float64), axis=0)

    def _combine(self, raw: np.ndarray) -> np.ndarray:
        if not self.standardise_:
            return raw[0]
        z = [(r - self.standardise_[c][0]) / self.standardise_[c][1] for c, r in zip(self.components_, raw, strict=True)]
        return np.max(z, axis=0)

    @property
    def inputs_(self) -> set[str]:
        """What the fitted scores read: ``{"features"}``, ``{"logits"}`` or both."""
        self._check_fitted()
        return {s.input for scorers in self.scorers_ for s in scorers}

    def score(self, outputs: Sequence[MemberFeatures]) -> np.ndarray:
        """``(N,)`` gate scores (mean over the gate's members), higher = more out-of-distribution."""
        self._check_fitted()
        return self._combine(self._component_scores(self._select(outputs, self.members_, "outputs")))

    def is_out(self, score: Any) -> np.ndarray:
        """Boolean ``score > threshold_`` (elementwise; a scalar gives a 0-d array)."""
        self._check_fitted()
        s = np.asarray(score, dtype=np.float64)
        if np.isnan(s).any():
            raise ValueError("The 'score' parameter holds NaN.")
        return s > self.threshold_

    def predict(self, outputs: Sequence[MemberFeatures]) -> np.ndarray:
        """``(N,)`` bool: which images are gated as out-of-distribution."""
        return self.is_out(self.score(outputs))

    # -- storage -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON for ``bundle.json``; the arrays are in :meth:`arrays` (saved by :meth:`save`)."""
        self._check_fitted()
        params = {c: s.get_params() for c, s in zip(self.components_, self.scorers_[0], strict=True)}
        return {
            "score": self.score_name,
            "components": list(self.components_),
            "params": params[self.components_[0]] if len(self.components_) == 1 else params,
            "quantile": self.quantile,
            "threshold": self.threshold_,
            "gate_when": "score > threshold",
            "members": list(self.members_),
            "combine": "per score the mean of the members' scores"
            + ("; then the maximum over the scores of (score - loc) / scale (standardise, held-out median and quantile)" if self.standardise_ else ""),
            "standardise": {c: {"loc": loc, "scale": scale} for c, (loc, scale) in self.standardise_.items()},
            "scorers": [[s.to_dict() for s in scorers] for scorers in self.scorers_],
            "heldout_gated_fraction": self.heldout_gated_fraction_,
            "n_train": self.n_train_,
            "n_heldout": self.n_heldout_,
            "provenance": dict(self.provenance_),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, keyed ``"<member index>/<score name>/<array name>"``."""
        self._check_fitted()
        return {
            f"{i}/{s.name}/{k}": v for i, scorers in enumerate(self.scorers_) for s in scorers for k, v in s.arrays().items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> OODGate:
        """A fitted gate from :meth:`to_dict` and :meth:`arrays` (identical decisions)."""
        missing = [k for k in ("score", "components", "quantile", "threshold", "members", "scorers") if k not in d]
        if missing:
            raise ValueError(f"The stored OOD gate lacks field(s) {missing}.")
        arrays = arrays or {}
        combined = len(d["components"]) > 1
        gate = cls(d["score"], quantile=d["quantile"], members=d["members"], params=d.get("params"))
        scorers: list[list[OODScore]] = []
        for i, member_scorers in enumerate(d["scorers"]):
            row = []
            for sd in member_scorers:
                prefix = f"{i}/{sd.get('name')}/"
                row.append(score_from_dict(sd, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}))
            scorers.append(row)
        if len(scorers) != len(d["members"]) or any([s.name for s in row] != list(d["components"]) for row in scorers):
            raise ValueError(
                f"The stored OOD gate must have one scorer per member ({len(d['members'])}) and score {d['components']}; "
                f"it has {[[s.name for s in row] for row in scorers]}."
            )
        if combined and set(d.get("standardise", {})) != set(d["components"]):
            raise ValueError(f"The stored OOD gate combines {d['components']} but standardises {sorted(d.get('standardise', {}))}.")
        gate.scorers_, gate.members_, gate.components_ = scorers, list(d["members"]), list(d["components"])
        gate.standardise_ = {c: (float(v["loc"]), float(v["scale"])) for c, v in d.get("standardise", {}).items()} if combined else {}
        gate.threshold_ = float(d["threshold"])
        gate.heldout_gated_fraction_ = float(d.get("heldout_gated_fraction", float("nan")))
        gate.n_train_, gate.n_heldout_ = int(d.get("n_train", 0)), int(d.get("n_heldout", 0))
        gate.provenance_ = dict(d.get("provenance", {}))
        return gate

    def save(self, folder: str | Path, filename: str = ARRAYS_FILE) -> dict[str, Any]:
        """Write the arrays to ``folder/filename`` (uncompressed .npz) and return :meth:`to_dict` with
        ``arrays: {file, sha256, bytes}``, ready for ``bundle.json``."""
        path = Path(folder) / filename
        np.savez(path, **self.arrays())
        d = self.to_dict()
        d["arrays"] = {"file": filename, "sha256": sha256_file(path), "bytes": path.stat().st_size}
        return d

    @classmethod
    def load(cls, d: dict[str, Any], folder: str | Path) -> OODGate:
        """The gate :meth:`save` wrote: ``d`` from bundle.json, its arrays from ``folder`` (sha256 checked)."""
        info = d.get("arrays") or {}
        arrays: dict[str, np.ndarray] = {}
        if info:
            path = Path(folder) / info["file"]
            if not path.is_file():
                raise FileNotFoundError(f"The OOD gate's arrays {path} are missing; refit the gate (skinlesion calibrate BUNDLE).")
            if info.get("sha256") and sha256_file(path) != info["sha256"]:
                raise ValueError(f"{path} does not match the sha256 recorded for the OOD gate; refit the gate (skinlesion calibrate BUNDLE).")
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        return cls.from_dict(d, arrays)


def bundle_gate(bundle: Any) -> OODGate | None:
    """The gate a saved bundle carries (bundle.json ``decision.ood``, arrays beside it, sha256 checked),
    loaded once and kept in ``bundle.cache``; None when the bundle has none. ``bundle``: a
    :class:`~skinlesion.ensemble.bundle.Bundle` (only its ``meta``, ``path`` and ``cache`` are read)."""
    spec = (bundle.meta.get("decision") or {}).get("ood")
    if not spec or bundle.path is None:
        return None
    if "ood_gate" not in bundle.cache:
        bundle.cache["ood_gate"] = OODGate.load(spec, bundle.path)
    return bundle.cache["ood_gate"]


__all__ = ["ARRAYS_FILE", "OODGate", "bundle_gate"]
