"""Evaluate a checkpoint on a split of its own manifest: metrics.json, predictions.csv, report.html."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import skinlesion
from skinlesion._json import json_default
from skinlesion.data.splits import apply_manifest, group_ids, read_manifest
from skinlesion.data.table import LesionTable
from skinlesion.errors import CheckpointError, DataError
from skinlesion.inference import predict_table
from skinlesion.metrics.bootstrap import standard_intervals
from skinlesion.metrics.calibration import (
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from skinlesion.metrics.classification import compute_classification_metrics
from skinlesion.metrics.isic import write_ground_truth, write_submission
from skinlesion.report.html import write_evaluation_report
from skinlesion.train.checkpoint import load_checkpoint
from skinlesion.train.config import DataConfig
from skinlesion.train.data import load_table

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def data_config_from_meta(meta: dict[str, Any], data_root: str | None) -> DataConfig:
    """The dataset a checkpoint was trained on (``data_root`` overrides its root folder)."""
    raw = dict(meta.get("config", {}).get("data", {}))
    if data_root:
        raw["root"] = data_root
    elif raw.get("format") == "synthetic" or not raw.get("root"):
        raw["root"] = meta["data"].get("root")
    return DataConfig.model_validate(raw)


def load_split_table(
    meta: dict[str, Any],
    manifest_path: Path,
    split: str,
    classes: Sequence[str],
    *,
    data_root: str | None = None,
    run_dir: Path | None = None,
    explicit_manifest: bool = False,
    where: str = "checkpoint.json",
) -> tuple[LesionTable, dict[str, Any], bool]:
    """Rows of ``split`` in the manifest the model was trained on, labels indexed by ``classes``.

    On a k-fold manifest (no "val" rows) ``split="val"`` means every non-test row: cross-fitted
    members are validated out-of-fold (see :func:`skinlesion.ensemble.build.build_bundle`).

    The manifest's hash must equal ``meta["data"]["split_hash"]`` unless the manifest was given
    explicitly (then ``same_split`` is False and callers record it). Returns ``(table, info, same_split)``.
    """
    if split not in SPLITS:
        raise ValueError(f"The 'split' parameter must be one of {SPLITS}. Got {split!r} instead.")
    if not manifest_path.is_file():
        raise CheckpointError(f"Split manifest {manifest_path} (recorded in {where}) is missing")
    man, info = read_manifest(manifest_path)
    expected = meta["data"].get("split_hash")
    if not expected:
        raise CheckpointError(f"{where} records no split hash: cannot verify the split")
    same_split = info["hash"] == expected
    if not same_split and not explicit_manifest:
        raise CheckpointError(f"Manifest {manifest_path} has hash {info['hash']} but the model was trained on {expected}")
    table = load_table(data_config_from_meta(meta, data_root), run_dir or manifest_path.parent)
    if tuple(table.classes) != tuple(classes):
        # The model's class order is authoritative; labels are re-indexed onto it.
        missing = sorted(set(table.classes) - set(classes))
        if missing:
            raise DataError(f"Dataset has classes {missing} that the model does not know ({list(classes)})")
        table.classes = tuple(classes)
    parts = apply_manifest(table, man)
    subset = parts.get(split)
    if split == "val" and "fold" in man.columns and not len(subset):
        subset = parts["train"]  # a k-fold manifest: validation is out-of-fold, every non-test row
    if subset is None or len(subset) == 0:
        raise DataError(f"Split {split!r} of {manifest_path} is empty")
    return subset, info, same_split


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    manifest: str | Path | None = None,
    n_boot: int = 1000,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict ``split`` of the checkpoint's lesion-disjoint manifest and write the evaluation files.

    The manifest must be the one the model was trained with (its hash is checked against the
    checkpoint) unless another is given explicitly, which is then recorded in the output.
    """
    if split not in SPLITS:
        raise ValueError(f"The 'split' parameter must be one of {SPLITS}. Got {split!r} instead.")
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.meta
    out = Path(out_dir) if out_dir else ckpt.path.parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)

    manifest_path = Path(manifest) if manifest else (ckpt.path / meta["data"]["manifest"]).resolve()
    subset, info, same_split = load_split_table(
        meta, manifest_path, split, ckpt.classes, data_root=data_root, run_dir=ckpt.path.parent,
        explicit_manifest=manifest is not None, where=f"{ckpt.path}/checkpoint.json",
    )

    probs = predict_table(ckpt.model, subset, ckpt.preprocessing, batch_size=batch_size, num_workers=num_workers)
    y = subset.labels()
    classes = list(ckpt.classes)
    metrics = compute_classification_metrics(y, probs, classes)
    groups = group_ids(subset).to_numpy()  # a missing lesion id makes the image its own group
    intervals = standard_intervals(y, probs, groups, classes, n_boot=n_boot, seed=seed)
    calibration = {
        "ece": expected_calibration_error(y, probs),
        "nll": negative_log_likelihood(y, probs),
        "brier": brier_score(y, probs),
        "reliability": reliability_curve(y, probs),
    }
    ids = subset.frame["image_id"].astype(str).tolist()
    write_submission(out / "predictions.csv", ids, probs, classes)
    write_ground_truth(out / "ground_truth.csv", ids, y, classes)
    provenance = {
        "checkpoint": str(ckpt.path),
        "backbone": meta["backbone"],
        "weights_sha256": meta.get("weights_sha256"),
        "split": split,
        "manifest": str(manifest_path),
        "split_hash": info["hash"],
        "same_split_as_training": same_split,
        "grouped_by_lesion": bool(info.get("grouped_by_lesion", subset.group_key != "image_id")),
        "dataset": meta["data"].get("source"),
        "n_images": int(len(subset)),
        "n_groups": int(len(set(groups))),
        "skinlesion_version": skinlesion.__version__,
        "trained_with": meta.get("versions", {}).get("skinlesion"),
        "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bootstrap": {"n_boot": n_boot, "resampled_by": subset.group_key, "alpha": 0.05},
    }
    fusion = meta.get("model", {}).get("metadata")
    if fusion:  # predict_table gave the model the table's metadata
        provenance["metadata_used"] = list(fusion.get("features", []))
    result = {"metrics": metrics, "intervals": intervals, "calibration": calibration, "provenance": provenance}
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))
    notes = [] if provenance["grouped_by_lesion"] else ["No lesion ids: split and bootstrap are by image; scores may be optimistic."]
    write_evaluation_report(
        out / "report.html",
        title=f"skinlesion evaluation: {meta['backbone']} on {split}",
        metrics={**metrics, "ece": calibration["ece"], "nll": calibration["nll"]},
        intervals=intervals,
        y_true=y,
        probs=probs,
        classes=classes,
        provenance=provenance,
        notes=notes,
    )
    log.info("Evaluation of %s on %s written to %s", ckpt.path, split, out)
    return {**result, "out_dir": str(out)}
