"""Build a decision bundle from checkpoints and calibrate its clinical thresholds, on validation only.

``build_bundle`` runs every member over the validation split of the manifest all members were
trained on (refusing members trained on different splits: one member's validation images could be
another's training images), fits member temperatures and/or weights and the ensemble temperature,
and writes the bundle. ``calibrate_bundle`` chooses per-class thresholds on the cached validation
outputs and records them, with their validation rates and any fallback, in ``bundle.json``.
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
from skinlesion.calibration.temperature import TemperatureScaler, apply_temperature
from skinlesion.calibration.thresholds import Target, ThresholdCalibrator
from skinlesion.data.splits import group_ids
from skinlesion.ensemble.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    TEMPERATURE_MODES,
    VALIDATION_CACHE,
    Bundle,
    BundleError,
    _member,
    load_bundle,
    write_meta,
)
from skinlesion.ensemble.predict import member_view_logits
from skinlesion.ensemble.tta import TTAPolicy
from skinlesion.ensemble.weighting import METHODS as WEIGHTINGS
from skinlesion.ensemble.weighting import EnsembleWeights
from skinlesion.errors import CheckpointError
from skinlesion.metrics.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
)
from skinlesion.metrics.classification import (
    balanced_accuracy,
    compute_classification_metrics,
)

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_members(checkpoints: Sequence[str | Path]) -> list[Any]:
    from skinlesion.train.checkpoint import load_checkpoint

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
    data_root: str | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    name: str | None = None,
    overwrite: bool = False,
    device: str | None = None,
) -> Bundle:
    """Build a bundle in ``out`` (see module docstring). Returns the loaded bundle."""
    from skinlesion.evaluation import load_split_table

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
    y = val.labels()
    k = len(classes)
    names = [f"m{i}-{c.meta['backbone']}" for i, c in enumerate(ckpts)]
    members = [_member(c, n) for c, n in zip(ckpts, names, strict=True)]

    logits = []
    for m in members:
        log.info("Validation pass of %s (%d images x %d views)", m.name, len(val), len(policy.views))
        logits.append(member_view_logits(m, val, policy.views, batch_size=batch_size, num_workers=num_workers, device=device))

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
                "validation": {**_val_metrics(y, lp, k), "recorded_at_training": c.meta.get("validation", {}).get("bacc")},
            }
            for m, c, lp in zip(members, ckpts, raw_lp, strict=True)
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
    bundle = Bundle(None, meta, members)
    uncal = bundle.log_probs(logits, calibrated=False)
    if temperature == "ensemble":
        scaler = TemperatureScaler().fit(uncal, y)
        meta["temperature"]["ensemble"] = scaler.temperature_
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
    save_validation_cache(out, val, y, names, policy.views, logits)
    write_meta(out, meta)
    log.info("Bundle written to %s", out)
    return load_bundle(out)


def save_validation_cache(out: Path, table: Any, y: np.ndarray, names: list[str], views: Sequence[str], logits: list[np.ndarray]) -> None:
    np.savez_compressed(
        out / VALIDATION_CACHE,
        image_id=np.asarray(table.frame["image_id"].astype(str).tolist(), dtype=str),
        group=np.asarray(group_ids(table).astype(str).tolist(), dtype=str),
        y=y,
        members=np.asarray(names),
        views=np.asarray(list(views)),
        **{f"logits_{i}": z.astype(np.float32) for i, z in enumerate(logits)},
    )


def load_validation_cache(bundle: Bundle) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Cached validation view logits ``M x (N, V, K)``, labels ``(N,)`` and groups; checked against the bundle."""
    if bundle.path is None:
        raise BundleError("An unsaved bundle (a bare checkpoint) has no validation cache")
    path = bundle.path / VALIDATION_CACHE
    if not path.is_file():
        raise BundleError(f"{path} is missing: rebuild the bundle with `skinlesion ensemble build`")
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["members"]]
        views = tuple(str(v) for v in z["views"])
        if names != [m.name for m in bundle.members] or views != bundle.tta.views:
            raise BundleError(
                f"{path} was computed for members {names} and views {list(views)}, but {bundle.path / META} has "
                f"{[m.name for m in bundle.members]} and {list(bundle.tta.views)}: rebuild the bundle"
            )
        logits = [z[f"logits_{i}"] for i in range(len(names))]
        return logits, z["y"], z["group"]


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
) -> dict[str, Any]:
    """Fit per-class thresholds on the bundle's validation outputs and record them in bundle.json."""
    bundle = load_bundle(path)
    logits, y, _ = load_validation_cache(bundle)
    probs = np.exp(bundle.log_probs(logits))
    cal = ThresholdCalibrator(
        targets, confidence=confidence, bound=bound, prefer=prefer, fallback=fallback, priority=priority,
        conflict=conflict,
    ).fit(probs, y, bundle.classes)
    decisions = cal.predict(probs)
    val_metrics = compute_classification_metrics(y, probs, list(bundle.classes), y_pred=decisions)
    meta = bundle.meta
    meta["decision"] = {
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
    }
    meta.setdefault("history", []).append({"at": _now(), "action": "calibrate", "targets": [t.__dict__ for t in targets]})
    write_meta(bundle.path, meta)  # type: ignore[arg-type]
    return meta["decision"]
