"""Evaluate a decision bundle on a split of its lesion-disjoint manifest.

Reports, side by side, the argmax of the calibrated ensemble and the bundle's decision rule
(thresholds + priority); for every targeted class whether the sensitivity and specificity targets
hold on the evaluated split, with lesion-bootstrap 95% intervals; and ECE/NLL before and after
temperature scaling. Thresholds and temperatures were fitted on validation: evaluating on ``val``
is in-sample and is labelled so.

For a bundle with metadata fusion members the split is evaluated a second time with the patient
metadata hidden (fusion members rerun with all metadata missing; image-only members' logits are
reused), decided by the without-metadata operating point (``decision.without_metadata``; the main
point when the bundle has none), and written under ``without_metadata`` in metrics.json with the
same structure and bootstrap intervals: what a user who gives no metadata gets.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import skinlesion
from skinlesion._json import json_default
from skinlesion.data.splits import group_ids
from skinlesion.ensemble.bundle import MANIFEST, WITH_METADATA, WITHOUT_METADATA, Bundle, load_bundle
from skinlesion.ensemble.predict import member_view_logits
from skinlesion.metrics.bootstrap import standard_intervals
from skinlesion.metrics.calibration import (
    expected_calibration_error,
    negative_log_likelihood,
)
from skinlesion.metrics.classification import compute_classification_metrics
from skinlesion.metrics.isic import write_ground_truth, write_submission
from skinlesion.report.html import write_evaluation_report

log = logging.getLogger(__name__)
HEADLINE = ("bacc", "malignant_bacc", "accuracy", "f1_macro")


def load_bundle_split(bundle: Bundle, split: str, data_root: str | None = None) -> Any:
    """The rows of ``split`` in the manifest the bundle's members were trained on (hash checked).

    A saved bundle uses its own copy of the manifest; a checkpoint wrapped by
    :func:`~skinlesion.ensemble.bundle.bundle_from_checkpoint` uses the checkpoint's.
    """
    from skinlesion.evaluation import load_split_table

    meta = dict(bundle.members[0].meta)
    if bundle.path is not None:
        meta["data"] = {**meta["data"], "split_hash": bundle.meta["provenance"]["split_hash"]}
        manifest, run_dir, where = bundle.path / MANIFEST, bundle.path, f"{bundle.path}/bundle.json"
    else:
        ckpt = Path(bundle.meta["members"][0]["dir"])
        manifest, run_dir, where = (ckpt / meta["data"]["manifest"]).resolve(), ckpt.parent, f"{ckpt}/checkpoint.json"
    table, _, _ = load_split_table(meta, manifest, split, bundle.classes, data_root=data_root, run_dir=run_dir, where=where)
    return table


def decision_outcomes(
    y: np.ndarray, probs: np.ndarray, decision: np.ndarray, bundle: Bundle, groups: np.ndarray, n_boot: int, seed: int,
    *, operating_point: str = WITH_METADATA,
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """Metrics of the decision rule, their lesion-bootstrap intervals, and the target table (the
    thresholds and targets of ``operating_point``)."""
    classes = list(bundle.classes)
    k = len(classes)
    metrics = compute_classification_metrics(y, probs, classes, y_pred=decision)
    onehot = np.eye(k)[decision]  # bootstrap metric fns read argmax(p): one-hot decisions
    intervals = standard_intervals(y, onehot, groups, classes, n_boot=n_boot, seed=seed)
    targets = []
    for c, spec in bundle.threshold_specs(operating_point).items():
        pc = metrics["per_class"][c]
        row: dict[str, Any] = {
            "class": c,
            "threshold": spec.get("threshold"),
            "validation_status": spec.get("status"),
            "rule": spec.get("rule"),
            "target_sensitivity": spec.get("target_sensitivity"),
            "target_specificity": spec.get("target_specificity"),
            "sensitivity": pc["sensitivity"],
            "specificity": pc["specificity"],
        }
        for key in ("sensitivity", "specificity"):
            iv = (intervals or {}).get(f"{key}_{c}", {})
            row[f"{key}_ci"] = [iv.get("low"), iv.get("high")] if iv else None
            row[f"{key}_met"] = bool(pc[key] >= row[f"target_{key}"]) if pc[key] is not None else None
        row["met"] = bool(row["sensitivity_met"] and row["specificity_met"])
        if spec.get("threshold") is not None:  # the one-vs-rest rule p >= t, before priority conflicts
            j = classes.index(c)
            hit, pos = probs[:, j] >= spec["threshold"], y == j
            row["one_vs_rest_sensitivity"] = float(hit[pos].mean()) if pos.any() else None
            row["one_vs_rest_specificity"] = float((~hit[~pos]).mean()) if (~pos).any() else None
        targets.append(row)
    return metrics, intervals, targets


def _calibration(y: np.ndarray, uncal: np.ndarray, probs: np.ndarray, bundle: Bundle, operating_point: str) -> dict[str, Any]:
    """ECE/NLL before and after the temperature scaling of ``operating_point``, and its temperatures."""
    return {
        "ece_before": expected_calibration_error(y, uncal),
        "ece_after": expected_calibration_error(y, probs),
        "nll_before": negative_log_likelihood(y, uncal),
        "nll_after": negative_log_likelihood(y, probs),
        "temperature": bundle.temperatures_for(operating_point),
    }


def _evaluate_without_metadata(
    bundle: Bundle, hidden: list[np.ndarray], y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """The main metrics structure (argmax, decision, targets, calibration) for view logits with the
    metadata hidden, decided by the without-metadata operating point (the main one if absent)."""
    classes = list(bundle.classes)
    point = bundle.resolve_operating_point(WITHOUT_METADATA)
    pred = bundle.predict_from_logits(hidden, metadata_given=np.zeros(len(y), dtype=bool))
    probs = pred.probs
    uncal = np.exp(bundle.log_probs(hidden, calibrated=False))
    dec_metrics, dec_intervals, targets = decision_outcomes(
        y, probs, pred.decision, bundle, groups, n_boot, seed, operating_point=point
    )
    description = (
        "temperature and thresholds fitted on validation with metadata hidden"
        if point == WITHOUT_METADATA
        else "this bundle has no operating point fitted without metadata: its main temperature and thresholds "
        "(fitted with metadata) are used"
    )
    return {
        "metadata": "hidden (every fusion member sees all metadata missing)",
        "operating_point": point,
        "operating_point_description": description,
        "thresholds": bundle.thresholds_for(point),
        "argmax": {
            "metrics": compute_classification_metrics(y, probs, classes),
            "intervals": standard_intervals(y, probs, groups, classes, n_boot=n_boot, seed=seed),
        },
        "decision": {"rule": bundle.meta["decision"].get("rule"), "metrics": dec_metrics, "intervals": dec_intervals},
        "targets": targets,
        "calibration": _calibration(y, uncal, probs, bundle, point),
    }


def evaluate_bundle(
    path: str | Path,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    n_boot: int = 1000,
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict ``split`` with the bundle and write metrics.json, predictions.csv, decisions.csv, report.html."""
    bundle = load_bundle(path)
    out = Path(out_dir) if out_dir else bundle.path / f"eval-{split}"  # type: ignore[operator]
    out.mkdir(parents=True, exist_ok=True)
    table = load_bundle_split(bundle, split, data_root)
    y = table.labels()
    groups = group_ids(table).to_numpy()
    classes = list(bundle.classes)
    view_logits = bundle.view_logits_table(table, batch_size=batch_size, num_workers=num_workers)
    uncal = np.exp(bundle.log_probs(view_logits, calibrated=False))
    pred = bundle.predict_from_logits(view_logits)
    probs = pred.probs

    argmax_metrics = compute_classification_metrics(y, probs, classes)
    argmax_intervals = standard_intervals(y, probs, groups, classes, n_boot=n_boot, seed=seed)
    dec_metrics, dec_intervals, targets = decision_outcomes(y, probs, pred.decision, bundle, groups, n_boot, seed)
    calibration = _calibration(y, uncal, probs, bundle, WITH_METADATA)
    fusion = {m.name for m in bundle.fusion_members}
    no_metadata = None
    if fusion:
        hidden = [
            member_view_logits(m, table, bundle.tta.views, batch_size=batch_size, num_workers=num_workers, use_metadata=False)
            if m.name in fusion else z
            for m, z in zip(bundle.members, view_logits, strict=True)
        ]
        no_metadata = _evaluate_without_metadata(bundle, hidden, y, groups, n_boot, seed)
    ids = table.frame["image_id"].astype(str).tolist()
    write_submission(out / "predictions.csv", ids, probs, classes)
    write_ground_truth(out / "ground_truth.csv", ids, y, classes)
    with open(out / "decisions.csv", "w", encoding="utf-8") as f:
        f.write("image,truth,argmax,decision,threshold_fired\n")
        for i, image_id in enumerate(ids):
            fired = classes[pred.fired[i]] if pred.fired[i] >= 0 else ""
            f.write(f"{image_id},{classes[y[i]]},{classes[pred.argmax[i]]},{classes[pred.decision[i]]},{fired}\n")

    in_sample = split == "val"
    provenance = {
        "bundle": str(bundle.path),
        "bundle_id": bundle.bundle_id,
        "members": ", ".join(f"{m.name} (w={m.weight:.3f})" for m in bundle.members),
        "tta": bundle.meta["tta"],
        "split": split,
        "split_hash": bundle.meta["provenance"]["split_hash"],
        "grouped_by_lesion": table.group_key != "image_id",
        "n_images": int(len(table)),
        "n_groups": int(len(set(groups))),
        "in_sample": in_sample,
        "skinlesion_version": skinlesion.__version__,
        "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bootstrap": {"n_boot": n_boot, "resampled_by": table.group_key, "alpha": 0.05},
    }
    result = {
        "argmax": {"metrics": argmax_metrics, "intervals": argmax_intervals},
        "decision": {"rule": bundle.meta["decision"].get("rule"), "metrics": dec_metrics, "intervals": dec_intervals},
        "targets": targets,
        "calibration": calibration,
        "provenance": provenance,
    }
    if no_metadata is not None:
        result["without_metadata"] = no_metadata
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))

    def fmt(metric: str, m: dict[str, Any], iv: dict[str, Any] | None) -> str:
        v = m.get(metric)
        if v is None:
            return "n/a"
        ci = (iv or {}).get(metric)
        return f"{v:.3f}" + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci and ci.get("low") is not None else "")

    side = [[h, fmt(h, argmax_metrics, argmax_intervals), fmt(h, dec_metrics, dec_intervals)] for h in HEADLINE]
    for c in classes:
        for key in ("sensitivity", "specificity"):
            name = f"{key}_{c}"
            a = {name: argmax_metrics["per_class"][c][key]}
            d = {name: dec_metrics["per_class"][c][key]}
            side.append([f"{c} {key}", fmt(name, a, argmax_intervals), fmt(name, d, dec_intervals)])
    target_rows = [
        [t["class"], f"{t['threshold']:.4f}" if t["threshold"] is not None else "none", t["validation_status"],
         f">= {t['target_sensitivity']}: {t['sensitivity']:.3f} " + ("met" if t["sensitivity_met"] else "NOT met"),
         f">= {t['target_specificity']}: {t['specificity']:.3f} " + ("met" if t["specificity_met"] else "NOT met"),
         f"{t['one_vs_rest_sensitivity']:.3f} / {t['one_vs_rest_specificity']:.3f}"
         if t.get("one_vs_rest_sensitivity") is not None else "n/a"]
        for t in targets
    ]
    notes = [
        "Probabilities: weighted ensemble with test-time augmentation and temperature scaling; "
        f"ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}, "
        f"NLL {calibration['nll_before']:.3f} -> {calibration['nll_after']:.3f} after temperature scaling."
    ]
    if not provenance["grouped_by_lesion"]:
        notes.append("No lesion ids: split and bootstrap are by image; scores may be optimistic.")
    if in_sample:
        notes.append("IN-SAMPLE: temperatures, weights and thresholds were fitted on this validation split.")
    extra_tables: list[tuple[str, list[str], list[list[str]]]] = []
    if no_metadata is not None:
        nm = no_metadata["decision"]
        notes.append(
            f"Without patient metadata ({no_metadata['operating_point_description']}): decision-rule BACC "
            f"{fmt('bacc', nm['metrics'], nm['intervals'])} vs {fmt('bacc', dec_metrics, dec_intervals)} with metadata."
        )
        rows = [[h, fmt(h, dec_metrics, dec_intervals), fmt(h, nm["metrics"], nm["intervals"])] for h in HEADLINE]
        for t in no_metadata["targets"]:
            c = t["class"]
            for key in ("sensitivity", "specificity"):
                name = f"{key}_{c}"
                rows.append([
                    f"{c} {key} (target {t[f'target_{key}']})",
                    fmt(name, {name: dec_metrics["per_class"][c][key]}, dec_intervals),
                    fmt(name, {name: nm["metrics"]["per_class"][c][key]}, nm["intervals"])
                    + {True: " met", False: " NOT met"}.get(t[f"{key}_met"], ""),
                ])
        extra_tables.append((
            f"Decision rule with and without patient metadata (without: {no_metadata['operating_point']} operating point)",
            ["Metric", "With metadata", "Metadata hidden"], rows,
        ))
    write_evaluation_report(
        out / "report.html",
        title=f"skinlesion evaluation: bundle {bundle.meta.get('name')} on {split}",
        metrics={**argmax_metrics, "ece": calibration["ece_after"], "nll": calibration["nll_after"]},
        intervals=argmax_intervals,
        y_true=y,
        probs=probs,
        classes=classes,
        provenance=provenance,
        notes=notes,
        extra_tables=[
            (f"Argmax vs decision rule (thresholds, {bundle.meta['decision'].get('conflict', 'priority')} conflicts)",
             ["Metric", "Argmax", "Decision rule"], side),
            ("Clinical targets on this split", ["Class", "Threshold", "On validation", "Sensitivity (decision rule)", "Specificity (decision rule)",
              "One-vs-rest p >= t: sens. / spec."], target_rows),
            *extra_tables,
        ],
    )
    log.info("Evaluation of bundle %s on %s written to %s", bundle.path, split, out)
    return {**result, "out_dir": str(out)}
