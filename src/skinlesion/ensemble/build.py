"""Build a decision bundle from checkpoints and calibrate its clinical thresholds, on validation only.

``build_bundle`` runs every member over the validation split of the manifest all members were
trained on (refusing members trained on different splits: one member's validation images could be
another's training images), fits member temperatures and/or weights and the ensemble temperature,
and writes the bundle. ``calibrate_bundle`` chooses per-class thresholds on the cached validation
outputs and records them, with their validation rates and any fallback, in ``bundle.json``.

For a bundle with metadata fusion members ``calibrate_bundle`` also fits the *without-metadata*
operating point: the validation view logits with the patient metadata hidden (fusion members
rerun on the validation images; image-only members' logits do not change) are cached in
``validation_no_metadata.npz``, and an ensemble temperature (the bundle's temperature mode) and
thresholds (the same targets and options) are fitted on them and recorded under
``decision.without_metadata``. Images predicted without metadata use that point.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import skinlesion
from skinlesion.calibration.decision import DEFAULT_POLICY, POLICIES
from skinlesion.calibration.temperature import BiasedTemperatureScaler, TemperatureScaler, apply_temperature
from skinlesion.calibration.thresholds import Target, ThresholdCalibrator
from skinlesion.data.splits import group_ids
from skinlesion.ensemble.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    TEMPERATURE_MODES,
    VALIDATION_CACHE,
    VALIDATION_NO_METADATA_CACHE,
    WITHOUT_METADATA,
    Bundle,
    BundleError,
    _member,
    load_bundle,
    at_input_size,
    write_meta,
)
from skinlesion.ensemble.predict import (
    member_view_logits,
    member_view_logits_with_hidden,
    out_of_fold_view_logits,
    out_of_fold_view_logits_with_hidden,
)
from skinlesion.ensemble.split import load_bundle_split, load_split_table
from skinlesion.ensemble.triage import fit_bundle_ood, fit_diagnosis_and_referral
from skinlesion.ensemble.weighting import METHODS as WEIGHTINGS
from skinlesion.ensemble.weighting import EnsembleWeights
from skinlesion.errors import CheckpointError, SkinLesionError
from skinlesion.inference.tta import TTAPolicy
from skinlesion.metrics.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
)
from skinlesion.metrics.classification import (
    balanced_accuracy,
    compute_classification_metrics,
)
from skinlesion.models.checkpoint import load_checkpoint
from skinlesion.models.fusion import MetadataFusionNet

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_members(checkpoints: Sequence[str | Path]) -> list[Any]:
    if not checkpoints:
        raise ValueError("Give at least one checkpoint to build a bundle from")
    ckpts = [load_checkpoint(c) for c in checkpoints]
    first = ckpts[0]
    for c in ckpts[1:]:
        if list(c.classes) != list(first.classes):
            raise CheckpointError(f"{c.path} has classes {list(c.classes)}; {first.path} has {list(first.classes)}")
        if c.meta["data"].get("split_hash") != first.meta["data"].get("split_hash"):
            raise CheckpointError(
                f"{c.path} was trained on split {c.meta['data'].get('split_hash')}, {first.path} on "
                f"{first.meta['data'].get('split_hash')}: members must share one split, or validation "
                "images of one member could be training images of another"
            )
    if len({str(c.path.resolve()) for c in ckpts}) != len(ckpts):
        raise ValueError("The same checkpoint is given twice")
    return ckpts


def member_folds(ckpts: Sequence[Any]) -> list[int] | None:
    """The fold each member was validated on (``data.fold`` of its training config), or None when
    no member was cross-fitted. Mixing cross-fitted and plain members, or two members of one fold,
    is an error."""
    folds = [c.meta.get("config", {}).get("data", {}).get("fold") for c in ckpts]
    if all(f is None for f in folds):
        return None
    if any(f is None for f in folds):
        plain = [str(c.path) for c, f in zip(ckpts, folds, strict=True) if f is None]
        raise CheckpointError(
            f"Members {plain} were trained on a train/val split, the others on folds of a k-fold manifest: "
            "a cross-fitted bundle needs every member trained with data.fold"
        )
    if len(set(folds)) != len(folds):
        raise CheckpointError(f"Members were trained on folds {folds}: each fold may have one member only")
    return [int(f) for f in folds]


def row_folds(table: Any, manifest_path: Path) -> np.ndarray:
    """The fold of every row of ``table`` in a k-fold manifest."""
    from skinlesion.data.splits import folds_of, read_manifest

    return folds_of(read_manifest(manifest_path)[0], table.frame["image_id"])


def _ensemble_temperature(uncal: np.ndarray, y: np.ndarray, classes: Sequence[str], class_bias: bool) -> dict[str, Any]:
    """The ensemble temperature fitted on held-out log-probabilities ``uncal`` ``(N, K)``, with per-class
    biases when ``class_bias`` (:class:`~skinlesion.calibration.temperature.BiasedTemperatureScaler`)."""
    if not class_bias:
        return {"ensemble": TemperatureScaler().fit(uncal, y).temperature_}
    sc = BiasedTemperatureScaler().fit(uncal, y)
    return {
        "ensemble": sc.temperature_,
        "bias": {c: round(float(b), 6) for c, b in zip(classes, sc.bias_, strict=True)},
        "fitted_by": "NLL on held-out predictions: softmax(log p / T + bias) (bias-corrected temperature scaling)",
    }


def _val_metrics(y: np.ndarray, log_probs: np.ndarray, k: int) -> dict[str, float]:
    p = np.exp(log_probs)
    return {
        "bacc": balanced_accuracy(y, p.argmax(1), k),
        "nll": negative_log_likelihood(y, p),
        "ece": expected_calibration_error(y, p),
    }


def build_bundle(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    weighting: str = "bacc",
    tta: str | Sequence[str] = "d4",
    average: str = "prob",
    temperature: str = "ensemble",
    class_bias: bool = True,
    data_root: str | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    name: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
    input_size: Sequence[int] | None = None,
) -> Bundle:
    """Build a bundle in ``out`` (see module docstring). Returns the loaded bundle.

    ``input_size`` (H, W) feeds every member at this resolution instead of its training size (a
    test-time resolution: validation, and everything fitted on it, is predicted at that size)."""
    if temperature not in TEMPERATURE_MODES:
        raise ValueError(f"The 'temperature' parameter must be one of {TEMPERATURE_MODES}. Got {temperature!r} instead.")
    if weighting not in WEIGHTINGS:  # checked before any work
        raise ValueError(f"The 'weighting' parameter must be one of {WEIGHTINGS}. Got {weighting!r} instead.")
    policy = TTAPolicy.parse(tta, average)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    ckpts = _load_members(checkpoints)
    first = ckpts[0]
    classes = list(first.classes)
    manifest_path = (first.path / first.meta["data"]["manifest"]).resolve()
    val, info, _ = load_split_table(
        first.meta, manifest_path, "val", classes, data_root=data_root, run_dir=first.path.parent,
        where=f"{first.path}/checkpoint.json",
    )
    folds = member_folds(ckpts)
    names = [f"m{i}-{c.meta['backbone']}" for i, c in enumerate(ckpts)]
    if folds is not None:  # cross-fitted: validation is out-of-fold, each row predicted by its fold's member
        val_folds = row_folds(val, manifest_path)
        val = val.subset(np.isin(val_folds, folds))
        val_folds = val_folds[np.isin(val_folds, folds)]
        names = [f"f{f}-{c.meta['backbone']}" for f, c in zip(folds, ckpts, strict=True)]
    y = val.labels()
    k = len(classes)
    members = [_member(c, n) for c, n in zip(ckpts, names, strict=True)]
    for m in members:
        m.preprocessing = at_input_size(m.preprocessing, input_size)

    # Fusion members: the same pass also gives the logits with the metadata hidden (the backbone runs
    # once, the fusion head twice), cached for calibration's without-metadata operating point.
    fusion = any(isinstance(m.model, MetadataFusionNet) for m in members)
    kw = {"batch_size": batch_size, "num_workers": num_workers, "device": device}
    logits: list[np.ndarray] = []
    hidden: list[np.ndarray] = []
    if folds is not None:
        log.info("Out-of-fold pass of %d members (%d images x %d views)", len(members), len(val), len(policy.views))
        if fusion:
            oof, oof_hidden = out_of_fold_view_logits_with_hidden(members, folds, val, val_folds, policy.views, **kw)
            hidden = [oof_hidden] * len(members)
        else:
            oof = out_of_fold_view_logits(members, folds, val, val_folds, policy.views, **kw)
        logits = [oof] * len(members)  # every member slot holds the row's out-of-fold logits
    for m in members if folds is None else []:
        log.info("Validation pass of %s (%d images x %d views)", m.name, len(val), len(policy.views))
        if fusion:
            z, zh = member_view_logits_with_hidden(m, val, policy.views, **kw)
            hidden.append(zh)
        else:
            z = member_view_logits(m, val, policy.views, **kw)
        logits.append(z)

    raw_lp = [apply_temperature(z, 1.0, policy.average) for z in logits]
    if temperature == "member":
        for m, z in zip(members, logits, strict=True):
            m.temperature = TemperatureScaler(policy.average).fit(z, y).temperature_
    member_lp = [apply_temperature(z, m.temperature, policy.average) for m, z in zip(members, logits, strict=True)]
    weights = EnsembleWeights(weighting).fit(member_lp, y)
    for m, w in zip(members, weights.weights_, strict=True):
        m.weight = float(w)

    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "created": _now(),
        "classes": classes,
        "members": [
            {
                "name": m.name,
                "dir": f"members/{m.name}",
                "backbone": m.backbone,
                "preprocessing": m.preprocessing,
                "weight": m.weight,
                "temperature": m.temperature,
                "weights_sha256": m.meta.get("weights_sha256"),
                "source_checkpoint": str(c.path.resolve()),
                "validation": {
                    **(_val_metrics(y, lp, k) if folds is None else _val_metrics(y[val_folds == f], lp[val_folds == f], k)),
                    "recorded_at_training": c.meta.get("validation", {}).get("bacc"),
                    **({} if folds is None else {"fold": f, "n": int((val_folds == f).sum())}),
                },
            }
            for m, c, lp, f in zip(members, ckpts, raw_lp, folds or [None] * len(members), strict=True)
        ],
        "weighting": {
            "method": weighting,
            "formula": {
                "bacc": "w_i = BACC_i / sum_j BACC_j (member argmax BACC on validation, bundle TTA)",
                "uniform": "w_i = 1 / M",
                "nll": "argmin_w validation NLL of sum_i w_i p_i, w_i >= 0, sum w_i = 1",
            }[weighting],
            "member_bacc": weights.member_bacc_.tolist(),
            "val_nll": weights.nll_,
            "val_nll_uniform": weights.uniform_nll_,
        },
        "tta": policy.to_dict(),
        "temperature": {"mode": temperature, "ensemble": 1.0, "fitted_on": "val"},
        "decision": {"rule": "argmax", "thresholds": {}, "priority": None},
        "provenance": {
            "split_hash": info["hash"],
            "manifest": MANIFEST,
            "dataset": first.meta["data"].get("source"),
            "data_config": first.meta.get("config", {}).get("data"),
            "group_key": val.group_key,
            "n_val": int(len(val)),
            "n_val_groups": int(group_ids(val).nunique()),
            "versions": {"skinlesion": skinlesion.__version__, **{f"member_{m.name}": c.meta.get("versions", {}) for m, c in zip(members, ckpts, strict=True)}},
        },
        "history": [{"at": _now(), "action": "build", "by": f"skinlesion {skinlesion.__version__}"}],
    }
    if folds is not None:
        meta["cross_fitting"] = {
            "k": int(max(info.get("k") or 0, max(folds) + 1)),
            "member_folds": {m.name: f for m, f in zip(members, folds, strict=True)},
            "validation": "out-of-fold: each validation row is predicted by the one member that did not train on it; "
            "temperature, thresholds and review flag are fitted on these single-member predictions",
        }
    bundle = Bundle(None, meta, members)
    uncal = bundle.log_probs(logits, calibrated=False)
    if temperature == "ensemble":
        meta["temperature"].update(_ensemble_temperature(uncal, y, bundle.classes, class_bias))
        bundle = Bundle(None, meta, members)  # with the fitted temperature
    cal = bundle.log_probs(logits)
    meta["validation"] = {
        "uncalibrated": _val_metrics(y, uncal, k),
        "calibrated": _val_metrics(y, cal, k),
        "identity_view_only": _val_metrics(y, bundle.log_probs(logits, views=[policy.views.index("identity")]), k)
        if "identity" in policy.views
        else None,
    }

    if out.exists() and overwrite:
        shutil.rmtree(out)
    (out / "members").mkdir(parents=True)
    for m, c in zip(members, ckpts, strict=True):
        shutil.copytree(c.path, out / "members" / m.name)
    shutil.copy2(manifest_path, out / MANIFEST)
    sidecar = manifest_path.with_suffix(".json")
    if sidecar.is_file():
        shutil.copy2(sidecar, out / Path(MANIFEST).with_suffix(".json"))
    save_validation_cache(
        out, val, y, names, policy.views, logits, **_member_keys(members), **({} if folds is None else {"fold": val_folds})
    )
    if hidden:
        save_validation_cache(
            out, val, y, names, policy.views, hidden, name=VALIDATION_NO_METADATA_CACHE,
            **_member_keys(members),
        )
    write_meta(out, meta)
    log.info("Bundle written to %s", out)
    return load_bundle(out)


def cache_input_sizes(members: Sequence[Any]) -> np.ndarray:
    """``(M, 2)``: the (H, W) each member was fed when a logits cache was computed (its test-time size)."""
    return np.asarray([list(m.input_size) for m in members], dtype=np.int64)


def _member_keys(members: Sequence[Any]) -> dict[str, np.ndarray]:
    """What a logits cache records to be checked against the bundle that reads it: the members'
    weights hashes and input sizes."""
    return {
        "weights_sha256": np.asarray([str(m.meta.get("weights_sha256")) for m in members]),
        "input_size": cache_input_sizes(members),
    }


def _cache_mismatch(z: Any, bundle: Bundle, *, weights_required: bool = False) -> str | None:
    """What an open logits cache was computed for that ``bundle`` does not have, in words (None: it
    matches): other members, views, member weights or input sizes. Weights hashes and input sizes are
    checked when the cache records them (caches written before they were recorded are taken as they
    are, except that ``weights_required`` refuses a cache without weights hashes)."""
    names, have = [str(n) for n in z["members"]], [m.name for m in bundle.members]
    if names != have:
        return f"members {names} (the bundle has {have})"
    views = [str(v) for v in z["views"]]
    if views != list(bundle.tta.views):
        return f"views {views} (the bundle has {list(bundle.tta.views)})"
    if "weights_sha256" in z.files:
        got, want = [str(h) for h in z["weights_sha256"].tolist()], _member_keys(bundle.members)["weights_sha256"].tolist()
        if got != want:
            return f"other weights of members {[n for n, a, b in zip(names, got, want) if a != b] or names}"
    elif weights_required:
        return "members whose weights it does not record"
    if "input_size" in z.files and z["input_size"].tolist() != cache_input_sizes(bundle.members).tolist():
        return f"input sizes (H, W) {z['input_size'].tolist()} (the bundle feeds {cache_input_sizes(bundle.members).tolist()})"
    return None


def save_validation_cache(
    out: Path, table: Any, y: np.ndarray, names: list[str], views: Sequence[str], logits: list[np.ndarray],
    name: str = VALIDATION_CACHE, **extra: np.ndarray,
) -> None:
    _write_cache(
        out / name,
        np.asarray(table.frame["image_id"].astype(str).tolist(), dtype=str),
        np.asarray(group_ids(table).astype(str).tolist(), dtype=str),
        y, names, views, logits, **extra,
    )


def _write_cache(
    path: Path, image_id: np.ndarray, group: np.ndarray, y: np.ndarray, names: Sequence[str], views: Sequence[str],
    logits: Sequence[np.ndarray], **extra: np.ndarray,
) -> None:
    """A validation cache: image ids, groups, labels, member names, views, ``logits_<i>`` ``(N, V, K)``.

    Members whose logits are identical (a cross-fitted bundle's out-of-fold rows: one composite for
    every member) are stored once: ``logits_alias[i]`` names the stored array of member ``i``
    (:func:`_read_logits`)."""
    arrays = [np.asarray(z).astype(np.float32) for z in logits]
    alias = [next(j for j in range(i + 1) if np.array_equal(arrays[j], arrays[i])) for i in range(len(arrays))]
    np.savez_compressed(
        path,
        image_id=np.asarray(image_id, dtype=str),
        group=np.asarray(group, dtype=str),
        y=y,
        members=np.asarray(list(names)),
        views=np.asarray(list(views)),
        logits_alias=np.asarray(alias, dtype=np.int64),
        **{f"logits_{i}": z for i, z in enumerate(arrays) if alias[i] == i},
        **extra,
    )


def _read_logits(z: Any, n: int) -> list[np.ndarray]:
    """The ``n`` members' ``logits_<i>`` of an open cache, following ``logits_alias`` when present."""
    alias = z["logits_alias"].tolist() if "logits_alias" in z.files else list(range(n))
    if len(alias) != n:
        raise BundleError(f"a logits cache lists {n} members but aliases {len(alias)} logit arrays: rebuild it")
    stored = {j: z[f"logits_{j}"] for j in sorted(set(alias))}
    return [stored[j] for j in alias]


def load_validation_cache(bundle: Bundle) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Cached validation view logits ``M x (N, V, K)``, labels ``(N,)`` and groups; checked against the bundle."""
    if bundle.path is None:
        raise BundleError("An unsaved bundle (a bare checkpoint) has no validation cache")
    path = bundle.path / VALIDATION_CACHE
    if not path.is_file():
        raise BundleError(f"{path} is missing: rebuild the bundle with `skinlesion ensemble build`")
    with np.load(path, allow_pickle=False) as z:
        mismatch = _cache_mismatch(z, bundle)
        if mismatch is not None:
            raise BundleError(
                f"{path} does not match {bundle.path / META}: it was computed for {mismatch}. Rebuild the bundle "
                "(`skinlesion ensemble build`, with --input-size for another test-time size)"
            )
        return _read_logits(z, len(z["members"])), z["y"], z["group"]


#: ``evaluate`` writes the split's view logits beside its metrics (with and without metadata), so that
#: benches over the same split reuse them instead of running every member again.
SPLIT_LOGITS = "view_logits.npz"
SPLIT_LOGITS_NO_METADATA = "view_logits_no_metadata.npz"


def save_split_logits(path: Path, bundle: Bundle, table: Any, logits: Sequence[np.ndarray]) -> None:
    """A split's view logits ``M x (N, V, K)`` with the rows' ids, groups and labels, the members' names
    and weights hashes and the views (the validation cache's format)."""
    _write_cache(
        Path(path), np.asarray(table.frame["image_id"].astype(str).tolist(), dtype=str),
        np.asarray(group_ids(table).astype(str).tolist(), dtype=str), table.labels(),
        [m.name for m in bundle.members], bundle.tta.views, logits,
        **_member_keys(bundle.members),
    )


def load_split_logits(path: str | Path, bundle: Bundle, image_id: Sequence[str]) -> list[np.ndarray]:
    """View logits saved by :func:`save_split_logits`, in the order of ``image_id``; BundleError when they
    were computed for other members, weights, views or images."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path} does not exist: run `skinlesion evaluate` on the bundle first")
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["members"]]
        mismatch = _cache_mismatch(z, bundle, weights_required=True)
        if mismatch is not None:
            raise BundleError(f"{path} does not match {bundle.path}: it was computed for {mismatch}. Evaluate the bundle again")
        position = {str(i): k for k, i in enumerate(z["image_id"])}
        missing = [str(i) for i in image_id if str(i) not in position]
        if missing:
            raise BundleError(f"{path} lacks {len(missing)} of the requested images (e.g. {missing[:3]}): evaluate the bundle again")
        order = np.asarray([position[str(i)] for i in image_id], dtype=np.int64)
        return [a[order] for a in _read_logits(z, len(names))]


def _cache_ids(bundle: Bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ids, groups and labels of the bundle's ``validation.npz`` (its row order)."""
    with np.load(bundle.path / VALIDATION_CACHE, allow_pickle=False) as z:  # type: ignore[operator]
        return z["image_id"], z["group"], z["y"]


def _read_no_metadata_cache(bundle: Bundle, image_id: np.ndarray) -> list[np.ndarray] | None:
    """The cached hidden-metadata validation logits when ``validation_no_metadata.npz`` was written for
    these members (names and weights hashes), views and validation images; None (with the reason
    logged) when it is absent or stale."""
    path = bundle.path / VALIDATION_NO_METADATA_CACHE  # type: ignore[operator]
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["members"]]
        mismatch = _cache_mismatch(z, bundle, weights_required=True)
        if mismatch is not None:
            log.info("%s was computed for %s: recomputing it", path, mismatch)
            return None
        if z["image_id"].shape != image_id.shape or not (z["image_id"] == image_id).all():
            log.info("%s was computed for other validation images than %s: recomputing it", path, VALIDATION_CACHE)
            return None
        return _read_logits(z, len(names))


def validation_logits_without_metadata(
    bundle: Bundle,
    logits: Sequence[np.ndarray] | None = None,
    *,
    data_root: str | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
) -> list[np.ndarray]:
    """Validation view logits ``M x (N, V, K)`` with the patient metadata hidden, rows as in ``validation.npz``.

    Read from ``validation_no_metadata.npz`` when it matches the members (names, weights hashes),
    views and validation images; otherwise the fusion members are run over the validation images
    with all metadata missing (``member_view_logits(..., use_metadata=False)``, as ``bench/quality.py``
    does), image-only members keep their ``validation.npz`` logits (``logits``; they do not depend
    on metadata), and the cache is written.
    """
    if bundle.path is None:
        raise BundleError("An unsaved bundle (a bare checkpoint) has no validation cache")
    if logits is None:
        logits, _, _ = load_validation_cache(bundle)
    image_id, group, y = _cache_ids(bundle)
    cached = _read_no_metadata_cache(bundle, image_id)
    if cached is not None:
        return cached
    fusion = bundle.fusion_members
    try:
        table = load_bundle_split(bundle, "val", data_root)
    except SkinLesionError as e:
        raise BundleError(
            f"{bundle.path}: members {[m.name for m in fusion]} take patient metadata, so calibration also fits "
            f"an operating point on validation with the metadata hidden; that needs the validation images (or "
            f"{VALIDATION_NO_METADATA_CACHE}), which could not be loaded ({e}). Pass the dataset folder (--data-root)."
        ) from None
    ids = table.frame["image_id"].astype(str).to_numpy()
    position = {i: k for k, i in enumerate(ids)}
    absent = [str(i) for i in image_id if str(i) not in position]
    if absent:
        raise BundleError(
            f"{bundle.path / VALIDATION_CACHE} lists {len(absent)} validation image(s) that the bundle's split does "
            f"not have (e.g. {absent[:3]}): rebuild the bundle"
        )
    order = np.asarray([position[str(i)] for i in image_id], dtype=np.int64)
    views = bundle.tta.views
    fusion_names = {m.name for m in fusion}
    hidden: list[np.ndarray] = []
    folds = bundle.member_folds
    if folds:  # out-of-fold, as validation.npz: each row by the member that did not train on it
        with np.load(bundle.path / VALIDATION_CACHE, allow_pickle=False) as z:
            fold_of = dict(zip(image_id.tolist(), z["fold"].tolist(), strict=True))
        log.info("Out-of-fold pass with the metadata hidden (%d images x %d views)", len(table), len(views))
        oof = out_of_fold_view_logits(
            bundle.members, [folds[m.name] for m in bundle.members], table,
            np.asarray([fold_of[i] for i in ids]), views, batch_size=batch_size, num_workers=num_workers, device=device,
            use_metadata=False,
        )[order]
        hidden = [oof] * len(bundle.members)
    for m, z in zip(bundle.members, logits, strict=True) if not folds else ():
        if m.name in fusion_names:
            log.info("Validation pass of %s with the metadata hidden (%d images x %d views)", m.name, len(table), len(views))
            zt = member_view_logits(
                m, table, views, batch_size=batch_size, num_workers=num_workers, device=device, use_metadata=False
            )
            hidden.append(zt[order])
        else:
            hidden.append(np.asarray(z))
    _write_cache(
        bundle.path / VALIDATION_NO_METADATA_CACHE, image_id, group, y, [m.name for m in bundle.members], views, hidden,
        **_member_keys(bundle.members),
    )
    return hidden


def _rates(y: np.ndarray, probs: np.ndarray, decisions: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """BACC, malignant BACC and per-class sensitivity/specificity of ``decisions``."""
    m = compute_classification_metrics(y, probs, list(classes), y_pred=decisions)
    return {
        "bacc": m["bacc"],
        "malignant_bacc": m["malignant_bacc"],
        "per_class": {c: {k: m["per_class"][c][k] for k in ("sensitivity", "specificity")} for c in classes},
    }


def _fit_without_metadata(
    bundle: Bundle, hidden: Sequence[np.ndarray], y: np.ndarray, groups: np.ndarray, calibrator: ThresholdCalibrator
) -> dict[str, Any]:
    """The without-metadata operating point: temperature(s) of the bundle's mode, thresholds
    (``calibrator``'s targets and options), diagnosis rule and referral fitted on validation logits with the metadata hidden.
    Also records what the main (with-metadata) point gives on the same logits, for comparison."""
    mode = bundle.temperature_mode
    average = bundle.spec.tta.average
    temperature: dict[str, Any] = {"mode": mode}
    if mode == "ensemble":
        uncal = bundle.log_probs(hidden, calibrated=False)
        temperature.update(_ensemble_temperature(uncal, y, bundle.classes, bundle.spec.temperature.bias is not None))
    elif mode == "member":
        fusion = {m.name for m in bundle.fusion_members}
        temperature["members"] = {
            m.name: TemperatureScaler(average).fit(z, y).temperature_ if m.name in fusion else m.temperature
            for m, z in zip(bundle.members, hidden, strict=True)
        }
    classes = bundle.classes
    main_probs = np.exp(bundle.log_probs(hidden))
    main_decisions, _ = bundle.decide(main_probs)
    point: dict[str, Any] = {"temperature": temperature, "thresholds": {}}
    bundle.meta["decision"]["without_metadata"] = point
    with_point = Bundle(bundle.path, bundle.meta, bundle.members)  # log_probs reads this point's temperature
    probs = np.exp(with_point.log_probs(hidden, operating_point=WITHOUT_METADATA))
    calibrator.fit(probs, y, classes)
    point["thresholds"] = {c: ch.to_dict() for c, ch in calibrator.choices_.items()}
    point["fitted_on"] = "val, metadata hidden"
    point["validation"] = _rates(y, probs, calibrator.predict(probs), classes)
    main = _rates(y, main_probs, main_decisions, classes)
    point["validation_with_metadata_point"] = {k: main[k] for k in ("bacc", "malignant_bacc")}
    point.update(fit_diagnosis_and_referral(probs, y, groups, classes, fitted_on="val, metadata hidden"))
    return point


def calibrate_bundle(
    path: str | Path,
    targets: Sequence[Target],
    *,
    confidence: float | None = 0.95,
    bound: str = "clopper-pearson",
    prefer: str = "balanced",
    fallback: str = "keep_sensitivity",
    priority: Sequence[str] | None = None,
    conflict: str = "priority",
    policy: str = DEFAULT_POLICY,
    class_bias: bool | None = None,
    ood: bool = False,
    ood_score: str = "knn",
    data_root: str | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Fit the decision on the bundle's validation (or out-of-fold) outputs and record it in bundle.json:
    per-class thresholds (the class flags and the priority-threshold rule), the diagnosis rule, the
    referral (:mod:`skinlesion.ensemble.triage`), and which of the two rules is *the* decision
    (``policy``: ``diagnosis`` or ``priority-threshold``).

    With metadata fusion members, also the without-metadata operating point (module docstring);
    ``data_root``, ``batch_size``, ``num_workers`` and ``device`` serve the validation pass with
    the metadata hidden when ``validation_no_metadata.npz`` is missing or stale, and the OOD gate.
    ``class_bias`` (True/False; None keeps the bundle's temperature): refit the ensemble temperature
    on the held-out predictions, with (True) or without per-class biases; a review flag fitted for the
    old temperature must then be refitted (``skinlesion explain review``).
    ``ood``: (re)fit the out-of-distribution gate (``ood_score``, on the training images, threshold on
    held-out ones); otherwise a gate the bundle already has is kept (it depends on the members only).
    """
    if policy not in POLICIES:
        raise ValueError(f"The 'policy' parameter must be one of {POLICIES}. Got {policy!r} instead.")
    bundle = load_bundle(path)
    logits, y, groups = load_validation_cache(bundle)
    fitted_on = "out-of-fold (cross-fitted)" if bundle.member_folds else "val"
    if class_bias is not None and bundle.temperature_mode == "ensemble":  # refit the main temperature (and biases)
        meta = bundle.meta
        meta["temperature"] = {
            "mode": "ensemble", "fitted_on": fitted_on,
            **_ensemble_temperature(bundle.log_probs(logits, calibrated=False), y, bundle.classes, class_bias),
        }
        bundle = Bundle(bundle.path, meta, bundle.members)
        meta["validation"]["calibrated"] = _val_metrics(y, bundle.log_probs(logits), len(bundle.classes))
    probs = np.exp(bundle.log_probs(logits))

    def calibrator() -> ThresholdCalibrator:
        return ThresholdCalibrator(
            targets, confidence=confidence, bound=bound, prefer=prefer, fallback=fallback, priority=priority,
            conflict=conflict,
        )

    cal = calibrator().fit(probs, y, bundle.classes)
    decisions = cal.predict(probs)
    val_metrics = compute_classification_metrics(y, probs, list(bundle.classes), y_pred=decisions)
    hidden = (
        validation_logits_without_metadata(
            bundle, logits, data_root=data_root, batch_size=batch_size, num_workers=num_workers, device=device
        )
        if bundle.fusion_members
        else None
    )
    meta = bundle.meta
    kept_ood = (meta.get("decision") or {}).get("ood") if not ood else None
    meta["decision"] = {
        "policy": policy,
        "rule": "priority-threshold",
        "description": (
            "Thresholded classes are checked in priority order; the first whose probability reaches its "
            "threshold is the decision; otherwise the most probable class among the classes without a threshold."
            if conflict == "priority"
            else "Among thresholded classes whose probability reaches the threshold, the one with the largest "
            "p / threshold is the decision; otherwise the most probable class among the classes without a threshold."
        ),
        "priority": cal.priority_,
        "conflict": conflict,
        "thresholds": {c: ch.to_dict() for c, ch in cal.choices_.items()},
        "confidence": confidence,
        "bound": bound,
        "prefer": prefer,
        "fallback": fallback,
        "fitted_on": "val",
        "validation": {
            "bacc": val_metrics["bacc"],
            "malignant_bacc": val_metrics["malignant_bacc"],
            "per_class": {
                c: {k: val_metrics["per_class"][c][k] for k in ("sensitivity", "specificity")} for c in bundle.classes
            },
        },
        **fit_diagnosis_and_referral(probs, y, groups, bundle.classes, fitted_on=fitted_on),
    }
    if hidden is not None:  # the main point as just fitted; sets meta["decision"]["without_metadata"]
        _fit_without_metadata(Bundle(bundle.path, meta, bundle.members), hidden, y, groups, calibrator())
    if ood:
        meta["decision"]["ood"] = fit_bundle_ood(
            Bundle(bundle.path, meta, bundle.members), data_root, score=ood_score, batch_size=batch_size, device=device
        )
    elif kept_ood:
        meta["decision"]["ood"] = kept_ood
    meta.setdefault("history", []).append(
        {"at": _now(), "action": "calibrate", "targets": [t.__dict__ for t in targets], "policy": policy, "ood_refitted": ood}
    )
    write_meta(bundle.path, meta)  # type: ignore[arg-type]
    return meta["decision"]
