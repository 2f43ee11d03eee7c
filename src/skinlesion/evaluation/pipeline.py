"""The one evaluation path: a decision bundle, or a checkpoint as a one-member bundle, on a split.

``skinlesion evaluate CHECKPOINT|BUNDLE --split test`` runs the same steps for both:

1. the rows of the split in the lesion-disjoint manifest the members were trained on, hash checked
   (:func:`~skinlesion.ensemble.split.bundle_split`);
2. every member's TTA view logits, the bundle's probabilities and decisions (:func:`predict_split`);
3. argmax metrics with lesion-bootstrap 95% intervals (:mod:`skinlesion.evaluation.outcomes`);
4. ``predictions.csv`` (ISIC submission format), ``ground_truth.csv``, ``metrics.json`` with the
   provenance, and ``report.html`` (:mod:`skinlesion.evaluation.report`).

A checkpoint is wrapped by :func:`~skinlesion.ensemble.bundle.bundle_from_checkpoint` (no TTA, no
temperature, argmax decisions). What differs is configuration, a :class:`Layout`:

* :data:`BUNDLE` reports, side by side, the argmax of the calibrated ensemble, the diagnosis
  (fitted for balanced accuracy; its gain over argmax with a paired interval) and the
  priority-threshold rule (thresholds + priority); each class flag's and the referral's sensitivity
  and specificity with intervals and whether the targets hold on the evaluated split; the share of
  the split the out-of-distribution gate flags; ECE/NLL before and after temperature scaling;
  and writes ``decisions.csv``. Thresholds and temperatures were fitted on validation: evaluating
  on ``val`` is in-sample and is labelled so. For a bundle with metadata fusion members the split is
  evaluated a second time with the patient metadata hidden (fusion members rerun with all metadata
  missing; image-only members' logits are reused), decided by the without-metadata operating point
  (``decision.without_metadata``; the main point when the bundle has none), and written under
  ``without_metadata`` in metrics.json with the same structure: what a user who gives no metadata gets.
* :data:`CHECKPOINT` keeps the single model's layout (``metrics``, ``intervals``, ``calibration``
  with Brier score and reliability curve) and its numbers: probabilities are the float32 softmax of
  the one view, as a checkpoint has always been scored (the bundle's float64 mixture of the same
  logits differs in the eighth decimal, which would change the reported ECE and NLL).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import skinlesion
from skinlesion._json import json_default
from skinlesion.calibration.referral import malignant_probability
from skinlesion.data.splits import group_ids
from skinlesion.ensemble.build import SPLIT_LOGITS, SPLIT_LOGITS_NO_METADATA, save_split_logits
from skinlesion.ensemble.bundle import (
    WITH_METADATA, WITHOUT_METADATA, Bundle, BundlePrediction, bundle_from_checkpoint, load_bundle,
)
from skinlesion.ensemble.predict import member_view_logits, member_view_logits_with_hidden
from skinlesion.ensemble.split import BundleSplit, bundle_split, check_split
from skinlesion.evaluation.outcomes import (
    argmax_outcomes,
    calibration_change,
    decision_outcomes,
    diagnosis_outcomes,
    flag_outcomes,
    probability_calibration,
    referral_outcomes,
)
from skinlesion.evaluation.report import bundle_report, checkpoint_report
from skinlesion.metrics.isic import write_ground_truth, write_submission
from skinlesion.report.html import write_evaluation_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """What an evaluation reports; the steps are the same (see the module doc)."""

    #: decision rule next to argmax, clinical targets, temperature before/after, decisions.csv,
    #: and the split again with the metadata hidden (bundles with metadata fusion members)
    decision_rule: bool
    #: probabilities: float32 softmax of a one-member bundle's single view (a checkpoint's numbers)
    model_softmax: bool
    #: the keys of ``provenance`` in metrics.json and the report, in order (where they apply)
    provenance: tuple[str, ...]


CHECKPOINT = Layout(
    decision_rule=False,
    model_softmax=True,
    provenance=("checkpoint", "backbone", "weights_sha256", "split", "manifest", "split_hash", "same_split_as_training",
                "grouped_by_lesion", "dataset", "n_images", "n_groups", "skinlesion_version", "trained_with", "evaluated",
                "bootstrap", "metadata_used"),
)
BUNDLE = Layout(
    decision_rule=True,
    model_softmax=False,
    provenance=("bundle", "bundle_id", "members", "tta", "split", "split_hash", "grouped_by_lesion", "n_images", "n_groups",
                "in_sample", "skinlesion_version", "evaluated", "bootstrap"),
)


@dataclass
class SplitPredictions:
    """A bundle's outputs on the rows of one split: what every number of an evaluation is computed from."""

    bundle: Bundle
    split: str
    rows: BundleSplit
    view_logits: list[np.ndarray]  # M x (N, V, K)
    prediction: BundlePrediction
    probs: np.ndarray  # (N, K) the probabilities reported (the prediction's, or the model softmax)
    y: np.ndarray  # (N,)
    groups: np.ndarray  # (N,) lesion ids (an image without one is its own group)
    hidden_logits: list[np.ndarray] | None = None  # M x (N, V, K) with the metadata hidden, when computed


def model_softmax(bundle: Bundle, view_logits: list[np.ndarray]) -> np.ndarray:
    """float32 softmax ``(N, K)`` of a one-member bundle without TTA or temperature (a checkpoint)."""
    import torch

    if len(bundle.members) != 1 or tuple(bundle.tta.views) != ("identity",) or bundle.temperature_mode != "none":
        raise ValueError("The model softmax needs a one-member bundle without TTA or temperature (a checkpoint).")
    return torch.softmax(torch.from_numpy(view_logits[0][:, 0]), dim=1).numpy()


def predict_split(
    bundle: Bundle,
    split: str,
    *,
    data_root: str | None = None,
    manifest: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    softmax: bool = False,
    hidden_too: bool = False,
) -> SplitPredictions:
    """Run the bundle over ``split`` of its manifest (:func:`bundle_split`); ``softmax``: report
    :func:`model_softmax` probabilities instead of the bundle's. ``hidden_too`` (a bundle with fusion
    members): the same pass also gives the view logits with the metadata hidden (``hidden_logits``;
    each backbone runs once, the fusion heads twice)."""
    rows = bundle_split(bundle, split, data_root, manifest)
    hidden_logits = None
    if hidden_too and bundle.fusion_members:
        pairs = [
            member_view_logits_with_hidden(m, rows.table, bundle.tta.views, batch_size=batch_size, num_workers=num_workers)
            for m in bundle.members
        ]
        view_logits, hidden_logits = [p[0] for p in pairs], [p[1] for p in pairs]
    else:
        view_logits = bundle.view_logits_table(rows.table, batch_size=batch_size, num_workers=num_workers)
    prediction = bundle.predict_from_logits(view_logits)
    probs = model_softmax(bundle, view_logits) if softmax else prediction.probs
    return SplitPredictions(
        bundle, split, rows, view_logits, prediction, probs, rows.table.labels(), group_ids(rows.table).to_numpy(),
        hidden_logits,
    )


def rule_outcomes(
    bundle: Bundle, y: np.ndarray, groups: np.ndarray, view_logits: list[np.ndarray], prediction: BundlePrediction,
    operating_point: str, n_boot: int, seed: int,
) -> dict[str, Any]:
    """Of one operating point: ``policy``; ``diagnosis`` (rule, metrics, intervals, gain over argmax);
    ``decision``, the priority-threshold rule (metrics, intervals) and its ``targets``; ``flags`` and
    ``referral`` (sensitivity, specificity, intervals, targets); ``calibration``."""
    probs = prediction.probs
    metrics, intervals, targets = decision_outcomes(
        y, probs, prediction.decision, bundle, groups, n_boot, seed, operating_point=operating_point
    )
    kw = {"operating_point": operating_point}
    return {
        "policy": bundle.policy,
        "diagnosis": diagnosis_outcomes(y, probs, prediction.diagnosis, bundle, groups, n_boot, seed, **kw),  # type: ignore[arg-type]
        "decision": {"rule": bundle.spec.decision.rule, "metrics": metrics, "intervals": intervals},
        "targets": targets,
        "flags": flag_outcomes(y, probs, bundle, groups, n_boot, seed, **kw),
        "referral": referral_outcomes(y, probs, bundle, groups, n_boot, seed, **kw),
        "calibration": calibration_change(y, bundle, view_logits, operating_point),
    }


def without_metadata(
    sp: SplitPredictions, n_boot: int, seed: int, batch_size: int, num_workers: int, logits_file: Path | None = None
) -> dict[str, Any] | None:
    """The main metrics structure with the metadata hidden from the fusion members, decided by the
    without-metadata operating point (the main one if absent); None for a bundle without fusion members.
    ``logits_file``: where to save the hidden-metadata view logits."""
    bundle = sp.bundle
    fusion = {m.name for m in bundle.fusion_members}
    if not fusion:
        return None
    hidden = sp.hidden_logits or [
        member_view_logits(m, sp.rows.table, bundle.tta.views, batch_size=batch_size, num_workers=num_workers, use_metadata=False)
        if m.name in fusion else z
        for m, z in zip(bundle.members, sp.view_logits, strict=True)
    ]
    if logits_file is not None and bundle.path is not None:
        save_split_logits(logits_file, bundle, sp.rows.table, hidden)
    point = bundle.resolve_operating_point(WITHOUT_METADATA)
    pred = bundle.predict_from_logits(hidden, metadata_given=np.zeros(len(sp.y), dtype=bool))
    metrics, intervals = argmax_outcomes(sp.y, pred.probs, sp.groups, bundle.classes, n_boot=n_boot, seed=seed)
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
        "argmax": {"metrics": metrics, "intervals": intervals},
        **rule_outcomes(bundle, sp.y, sp.groups, hidden, pred, point, n_boot, seed),
    }


def ood_outcomes(sp: SplitPredictions, batch_size: int) -> dict[str, Any] | None:
    """The out-of-distribution gate on the split's images: how many it gates (None: no gate)."""
    from skinlesion.ood.features import table_features
    from skinlesion.ood.gate import bundle_gate

    gate = bundle_gate(sp.bundle)
    if gate is None:
        return None
    used = [m for m in sp.bundle.members if m.name in gate.members_]
    gated = gate.predict(table_features(used, sp.rows.table, batch_size=batch_size))
    return {
        "score": gate.score_name, "members": list(gate.members_), "threshold": gate.threshold_, "quantile": gate.quantile,
        "n_images": int(gated.size), "gated": int(gated.sum()), "gated_fraction": float(gated.mean()),
        "heldout_gated_fraction": gate.heldout_gated_fraction_,
    }


def provenance(sp: SplitPredictions, layout: Layout, n_boot: int) -> dict[str, Any]:
    """What was evaluated, on which rows, with which versions: the ``layout.provenance`` keys."""
    bundle, table, info = sp.bundle, sp.rows.table, sp.rows.info
    first = bundle.members[0]
    facts = {
        "checkpoint": bundle.spec.provenance.checkpoint,
        "backbone": first.backbone,
        "weights_sha256": first.meta.get("weights_sha256"),
        "bundle": str(bundle.path),
        "bundle_id": bundle.bundle_id,
        "members": ", ".join(f"{m.name} (w={m.weight:.3f})" for m in bundle.members),
        "tta": bundle.tta.to_dict(),
        "split": sp.split,
        "manifest": str(sp.rows.manifest),
        "split_hash": info["hash"],
        "same_split_as_training": sp.rows.same_split,
        "grouped_by_lesion": bool(info.get("grouped_by_lesion", table.group_key != "image_id")),
        "dataset": first.meta["data"].get("source"),
        "n_images": int(len(table)),
        "n_groups": int(len(set(sp.groups))),
        "in_sample": sp.split == "val",
        "skinlesion_version": skinlesion.__version__,
        "trained_with": first.meta.get("versions", {}).get("skinlesion"),
        "evaluated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bootstrap": {"n_boot": n_boot, "resampled_by": table.group_key, "alpha": 0.05},
    }
    fusion = first.meta.get("model", {}).get("metadata")
    if fusion:  # a fusion model was given the table's metadata
        facts["metadata_used"] = list(fusion.get("features", []))
    return {k: facts[k] for k in layout.provenance if k in facts}


def _write_decisions(path: Path, ids: list[str], y: np.ndarray, pred: BundlePrediction, bundle: Bundle) -> None:
    """Per image: truth, argmax, diagnosis, the priority-threshold rule's decision and the threshold
    that fired, the raised flags (``;``-joined) and the referral (empty: none fitted)."""
    classes = list(bundle.classes)
    points = {op: bundle.threshold_specs(op) for op in (WITH_METADATA, WITHOUT_METADATA)}
    with open(path, "w", encoding="utf-8") as f:
        f.write("image,truth,argmax,diagnosis,priority_threshold_decision,threshold_fired,flags,refer\n")
        for i, image_id in enumerate(ids):
            op = str(pred.operating_point[i])  # type: ignore[index]
            p = pred.probs[i]
            fired = classes[pred.fired[i]] if pred.fired[i] >= 0 else ""
            flags = ";".join(c for c, s in points[op].items() if s.threshold is not None and p[classes.index(c)] >= s.threshold)
            ref = bundle.referral_spec(op)
            refer = "" if ref is None else str(bool(malignant_probability(p[None], classes)[0] >= ref.threshold)).lower()  # type: ignore[operator]
            f.write(
                f"{image_id},{classes[y[i]]},{classes[pred.argmax[i]]},{classes[pred.diagnosis[i]]},"  # type: ignore[index]
                f"{classes[pred.decision[i]]},{fired},{flags},{refer}\n"
            )


def evaluate_split(
    bundle: Bundle,
    layout: Layout,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    data_root: str | None = None,
    manifest: str | Path | None = None,
    n_boot: int = 1000,
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Predict ``split`` with ``bundle`` and write the evaluation files of ``layout`` (module doc) in
    ``out_dir`` (default: ``eval-<split>`` beside the checkpoint, or in the bundle). Returns metrics.json
    plus ``out_dir``."""
    check_split(split)
    source = bundle.path if bundle.path is not None else Path(str(bundle.spec.provenance.checkpoint)).parent
    out = Path(out_dir) if out_dir else source / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    sp = predict_split(
        bundle, split, data_root=data_root, manifest=manifest, batch_size=batch_size, num_workers=num_workers,
        softmax=layout.model_softmax, hidden_too=layout.decision_rule,
    )
    classes = list(bundle.classes)
    metrics, intervals = argmax_outcomes(sp.y, sp.probs, sp.groups, classes, n_boot=n_boot, seed=seed)
    prov = provenance(sp, layout, n_boot)
    ids = sp.rows.table.frame["image_id"].astype(str).tolist()
    if layout.decision_rule:
        result = {
            "argmax": {"metrics": metrics, "intervals": intervals},
            **rule_outcomes(bundle, sp.y, sp.groups, sp.view_logits, sp.prediction, WITH_METADATA, n_boot, seed),
            "provenance": prov,
        }
        ood = ood_outcomes(sp, batch_size)
        if ood is not None:
            result["ood"] = ood
        if bundle.path is not None:
            save_split_logits(out / SPLIT_LOGITS, bundle, sp.rows.table, sp.view_logits)
        hidden = without_metadata(sp, n_boot, seed, batch_size, num_workers, out / SPLIT_LOGITS_NO_METADATA)
        if hidden is not None:
            result["without_metadata"] = hidden
        _write_decisions(out / "decisions.csv", ids, sp.y, sp.prediction, bundle)
        report = bundle_report(result, bundle, split)
    else:
        calibration = probability_calibration(sp.y, sp.probs)
        result = {"metrics": metrics, "intervals": intervals, "calibration": calibration, "provenance": prov}
        report = checkpoint_report(result, bundle.members[0].backbone, split)
    write_submission(out / "predictions.csv", ids, sp.probs, classes)
    write_ground_truth(out / "ground_truth.csv", ids, sp.y, classes)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=json_default))
    write_evaluation_report(
        out / "report.html", intervals=intervals, y_true=sp.y, probs=sp.probs, classes=classes, provenance=prov, **report
    )
    log.info("Evaluation of %s on %s written to %s", f"bundle {bundle.path}" if bundle.path else prov["checkpoint"], split, out)
    return {**result, "out_dir": str(out)}


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", batch_size: int = 64, **kw: Any) -> dict[str, Any]:
    """Evaluate a checkpoint as a one-member bundle (:data:`CHECKPOINT` layout): metrics.json,
    predictions.csv, ground_truth.csv, report.html in ``<run>/eval-<split>`` by default.

    The manifest must be the one the model was trained with (its hash is checked against the
    checkpoint) unless another is given explicitly (``manifest``), which is then recorded in the
    output. Other keyword arguments: those of :func:`evaluate_split`.
    """
    check_split(split)  # before loading anything
    return evaluate_split(bundle_from_checkpoint(checkpoint), CHECKPOINT, split=split, batch_size=batch_size, **kw)


def evaluate_bundle(path: str | Path, **kw: Any) -> dict[str, Any]:
    """Evaluate a saved bundle (:data:`BUNDLE` layout): metrics.json, predictions.csv, decisions.csv,
    ground_truth.csv, report.html in ``BUNDLE/eval-<split>`` by default. Keyword arguments: those of
    :func:`evaluate_split`."""
    return evaluate_split(load_bundle(path), BUNDLE, **kw)
