"""Patient metadata (age, sex, anatomical site) as a fixed-length vector for a fusion model.

The ISIC 2019 winners fused such a vector with the CNN features through a small dense network
(Gessert et al., "Skin lesion classification using ensembles of multi-resolution EfficientNets with
meta data", MethodsX 7, 100864, 2020); :mod:`skinlesion.models.fusion` is that branch.

:class:`MetadataEncoder` is fitted on the training split only and lays the vector out as
(each group present when its feature is used, always in this order):

* ``age``: ``age_z`` = (age - ``age_mean_``) / ``age_std_`` (0 when missing) and ``age_missing``
  (1 when missing);
* ``sex``: ``sex=male``, ``sex=female``, ``sex=unknown`` (one-hot);
* ``site``: ``site=<name>`` for every site of the training vocabulary ``sites_`` (sorted), then
  ``site=unknown`` (one-hot). A site never seen in training is encoded as unknown, never an error.

Missing means ``None``, NaN, ``""`` or ``"unknown"`` (any case), as HAM10000 writes it. Invalid
values (an age that is not a number of years in [0, 120], a sex other than male/female, a site that
is not text) raise ValueError naming the field, the value and where it came from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

#: Metadata features a fusion model can use, in the order their columns appear.
FEATURES: tuple[str, ...] = ("age", "sex", "site")
#: Values read as "missing" (compared after stripping and lower-casing).
MISSING_TEXT = frozenset({"", "unknown"})
#: Accepted ages in years.
AGE_RANGE: tuple[float, float] = (0.0, 120.0)
SEXES: tuple[str, ...] = ("male", "female")
_FORMAT = "skinlesion-metadata-encoder"


def check_features(features: Iterable[str] | str, parameter: str = "features") -> tuple[str, ...]:
    """``features`` (a subset of :data:`FEATURES`, no repeats) in canonical order."""
    items = [features] if isinstance(features, str) else list(features)
    unknown = [f for f in items if f not in FEATURES]
    if unknown or not items or len(set(items)) != len(items):
        raise ValueError(
            f"The '{parameter}' parameter must list distinct features among {list(FEATURES)}. Got {items!r} instead."
        )
    return tuple(f for f in FEATURES if f in items)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TEXT


def _invalid(field: str, value: Any, where: str, must: str) -> ValueError:
    return ValueError(f"The '{field}' value of {where} must be {must}. Got {value!r} instead.")


def parse_age(value: Any, where: str = "the record") -> float:
    """Age in years as a float, NaN when missing; ValueError for anything else outside [0, 120]."""
    if _is_missing(value):
        return math.nan
    must = f"a number of years in [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}] or missing"
    if isinstance(value, str):
        try:
            age = float(value.strip())
        except ValueError:
            raise _invalid("age", value, where, must) from None
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _invalid("age", value, where, must)
    else:
        age = float(value)
    if not math.isfinite(age) or not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
        raise _invalid("age", value, where, must)
    return age


def parse_sex(value: Any, where: str = "the record") -> str | None:
    """``"male"``/``"female"`` (any case), None when missing; ValueError otherwise."""
    if _is_missing(value):
        return None
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in SEXES:
        raise _invalid("sex", value, where, "'male', 'female' or missing ('unknown', empty)")
    return text


def parse_site(value: Any, where: str = "the record") -> str | None:
    """Anatomical site as stripped lower-case text, None when missing; ValueError if not text."""
    if _is_missing(value):
        return None
    if not isinstance(value, str):
        raise _invalid("site", value, where, "an anatomical site name (text) or missing")
    return " ".join(value.strip().lower().split())


class MetadataEncoder:
    """Encodes age, sex and anatomical site for :class:`~skinlesion.models.fusion.MetadataFusionNet`.

    Parameters:
        features: the features to use, a subset of :data:`FEATURES` (columns follow that order).

    After :meth:`fit` (training split only): ``age_mean_``/``age_std_`` (standardisation of age),
    ``sites_`` (the site vocabulary) and ``feature_names_`` (one name per column). The fitted state
    round-trips through :meth:`to_dict`/:meth:`from_dict` (stored in a checkpoint's JSON).
    """

    def __init__(self, features: Sequence[str] = FEATURES) -> None:
        self.features = check_features(features)

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, data: Any) -> MetadataEncoder:
        """Learn age mean/std and the site vocabulary from a LesionTable, DataFrame or list of dicts.

        A used feature must be a column of the data; values are checked as in :meth:`encode`.
        """
        frame = _as_frame(data)
        absent = [f for f in self.features if f not in frame.columns]
        if absent:
            raise ValueError(
                f"The training data has no {absent} column(s), so the encoder cannot use them: the dataset "
                f"carries only {[f for f in FEATURES if f in frame.columns]} of {list(FEATURES)}."
            )
        ages, _, sites = _parse_frame(frame, self.features)
        self.age_mean_, self.age_std_ = 0.0, 1.0
        if "age" in self.features:
            known = ages[~np.isnan(ages)]
            if known.size:
                self.age_mean_ = float(known.mean())
                self.age_std_ = float(known.std()) if known.std() > 1e-6 else 1.0
        self.sites_ = tuple(sorted({s for s in sites if s is not None})) if "site" in self.features else ()
        for f in self.features:
            column = frame[f]
            if bool(column.map(_is_missing).all()):
                logger.warning("Metadata feature %r is missing for every training row: it carries no information.", f)
        self.feature_names_ = self._names()
        return self

    def _names(self) -> tuple[str, ...]:
        names: list[str] = []
        if "age" in self.features:
            names += ["age_z", "age_missing"]
        if "sex" in self.features:
            names += [f"sex={s}" for s in SEXES] + ["sex=unknown"]
        if "site" in self.features:
            names += [f"site={s}" for s in self.sites_] + ["site=unknown"]
        return tuple(names)

    def _check_fitted(self) -> None:
        if not hasattr(self, "feature_names_"):
            raise RuntimeError("This MetadataEncoder is not fitted yet: call fit(train_table) first.")

    @property
    def n_features(self) -> int:
        """Length of the encoded vector."""
        self._check_fitted()
        return len(self.feature_names_)

    # -- encoding ----------------------------------------------------------------------------------
    def encode(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode records like ``{"age": 55, "sex": "male", "site": "back"}``: float32 ``(N, D)``.

        Any key may be absent (missing). Keys other than ``age``, ``sex``, ``site`` are an error (a
        misspelt key would otherwise silently read as missing); features the encoder does not use
        are checked and ignored.
        """
        self._check_fitted()
        if isinstance(records, Mapping) or isinstance(records, str) or not isinstance(records, Sequence):
            raise ValueError(
                "The 'records' parameter must be a list of dicts with keys among "
                f"{list(FEATURES)}. Got {type(records).__name__} instead."
            )
        ages, sexes, sites = [], [], []
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise ValueError(f"records[{i}] must be a dict with keys among {list(FEATURES)}. Got {rec!r} instead.")
            unknown = sorted(str(k) for k in rec if k not in FEATURES)
            if unknown:
                raise ValueError(f"records[{i}] has unknown key(s) {unknown}; metadata keys are {list(FEATURES)}.")
            where = f"records[{i}]"
            ages.append(parse_age(rec.get("age"), where))
            sexes.append(parse_sex(rec.get("sex"), where))
            sites.append(parse_site(rec.get("site"), where))
        return self._encode(np.asarray(ages, dtype=np.float64), sexes, sites)

    def encode_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Encode the ``age``/``sex``/``site`` columns of a table's frame: float32 ``(N, D)``.

        A used feature without a column is missing for every row (warned); errors name the image id.
        """
        self._check_fitted()
        frame = _as_frame(frame)
        absent = [f for f in self.features if f not in frame.columns]
        if absent:
            logger.warning("The data has no %s column(s): encoded as missing for every image.", absent)
        return self._encode(*_parse_frame(frame, self.features))

    def missing_vector(self) -> np.ndarray:
        """The encoding of a record with every feature missing, float32 ``(D,)``."""
        return self.encode([{}])[0]

    def _encode(self, ages: np.ndarray, sexes: Sequence[str | None], sites: Sequence[str | None]) -> np.ndarray:
        n = len(ages)
        parts: list[np.ndarray] = []
        if "age" in self.features:
            missing = np.isnan(ages)
            z = np.where(missing, 0.0, (np.nan_to_num(ages) - self.age_mean_) / self.age_std_)
            parts.append(np.stack([z, missing.astype(np.float64)], axis=1))
        if "sex" in self.features:
            onehot = np.zeros((n, len(SEXES) + 1))
            onehot[np.arange(n), [SEXES.index(s) if s is not None else len(SEXES) for s in sexes]] = 1.0
            parts.append(onehot)
        if "site" in self.features:
            index = {s: i for i, s in enumerate(self.sites_)}
            onehot = np.zeros((n, len(self.sites_) + 1))
            onehot[np.arange(n), [index.get(s, len(self.sites_)) if s is not None else len(self.sites_) for s in sites]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1).astype(np.float32) if n else np.zeros((0, self.n_features), np.float32)

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fitted state (see :meth:`from_dict`)."""
        self._check_fitted()
        return {
            "format": _FORMAT,
            "features": list(self.features),
            "age_mean": self.age_mean_,
            "age_std": self.age_std_,
            "sites": list(self.sites_),
            "feature_names": list(self.feature_names_),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MetadataEncoder:
        """Rebuild a fitted encoder from :meth:`to_dict`; ValueError names a missing or bad field."""
        if not isinstance(state, Mapping) or state.get("format") != _FORMAT:
            raise ValueError(f"The metadata encoder state must be a dict with format {_FORMAT!r}. Got {state!r} instead.")
        missing = [k for k in ("features", "age_mean", "age_std", "sites", "feature_names") if k not in state]
        if missing:
            raise ValueError(f"The metadata encoder state lacks field(s) {missing}.")
        enc = cls(state["features"])
        mean, std = state["age_mean"], state["age_std"]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (mean, std)) or std <= 0:
            raise ValueError(f"The metadata encoder's 'age_mean'/'age_std' must be finite with std > 0. Got {mean!r}/{std!r}.")
        sites = state["sites"]
        if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites) or len(set(sites)) != len(sites):
            raise ValueError(f"The metadata encoder's 'sites' must be a list of distinct names. Got {sites!r} instead.")
        enc.age_mean_, enc.age_std_, enc.sites_ = float(mean), float(std), tuple(sites)
        enc.feature_names_ = enc._names()
        if list(enc.feature_names_) != list(state["feature_names"]):
            raise ValueError(
                f"The metadata encoder's 'feature_names' {state['feature_names']!r} do not match its features and "
                f"sites ({list(enc.feature_names_)})."
            )
        return enc

    def __repr__(self) -> str:
        fitted = f", n_features={len(self.feature_names_)}" if hasattr(self, "feature_names_") else ", not fitted"
        return f"MetadataEncoder(features={list(self.features)}{fitted})"


def _as_frame(data: Any) -> pd.DataFrame:
    frame = getattr(data, "frame", data)  # a LesionTable
    if isinstance(frame, pd.DataFrame):
        return frame
    if isinstance(frame, Sequence) and not isinstance(frame, str) and all(isinstance(r, Mapping) for r in frame):
        return pd.DataFrame(list(frame))
    raise ValueError(f"Expected a LesionTable, a DataFrame or a list of dicts. Got {type(data).__name__} instead.")


def _parse_frame(frame: pd.DataFrame, features: Sequence[str]) -> tuple[np.ndarray, list[str | None], list[str | None]]:
    n = len(frame)
    if "image_id" in frame.columns:
        where = [f"image_id {i!r}" for i in frame["image_id"].astype(str)]
    else:
        where = [f"row {i}" for i in range(n)]

    def column(name: str) -> list[Any]:
        return frame[name].tolist() if name in features and name in frame.columns else [None] * n

    ages = np.asarray([parse_age(v, w) for v, w in zip(column("age"), where, strict=True)], dtype=np.float64)
    sexes = [parse_sex(v, w) for v, w in zip(column("sex"), where, strict=True)]
    sites = [parse_site(v, w) for v, w in zip(column("site"), where, strict=True)]
    return ages, sexes, sites


__all__ = ["AGE_RANGE", "FEATURES", "SEXES", "MetadataEncoder", "check_features", "parse_age", "parse_sex", "parse_site"]
