"""``skinlesion ensemble build`` and ``skinlesion calibrate``: decision bundles from checkpoints."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from skinlesion.cli._common import console, parse_hw, user_errors

ensemble_app = typer.Typer(help="Combine checkpoints into a decision bundle.", no_args_is_help=True)


@ensemble_app.command("build")
def build_command(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoint (or run) folders; all trained on one split."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write."),
    weights: str = typer.Option("bacc", "--weights", help="bacc (proportional to validation BACC), uniform, or nll (fitted)."),
    tta: str = typer.Option("d4", "--tta", help="Views: d4, flips, none, or a list e.g. identity,hflip,rot90,zoom:1.15."),
    average: str = typer.Option("prob", "--average", help="Average TTA views as probabilities (prob) or logits (logit)."),
    temperature: str = typer.Option("ensemble", "--temperature", help="ensemble, member (one per member) or none."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: the folder name)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle folder."),
    input_size: str | None = typer.Option(
        None, "--input-size", help="HxW, e.g. 144x192: feed every member at this test-time resolution (default: its training size)."
    ),
) -> None:
    """Fit member weights and temperature on the validation split and write a decision bundle."""
    from skinlesion.ensemble.build import build_bundle

    with user_errors():
        b = build_bundle(
            checkpoints, out, weighting=weights, tta=tta, average=average, temperature=temperature,
            data_root=data_root, batch_size=batch_size, name=name, overwrite=overwrite,
            input_size=parse_hw(input_size, "--input-size") if input_size else None,
        )
    v = b.spec.validation
    for m in b.members:
        console.print(f"{m.name:<32} weight {m.weight:.3f}  temperature {m.temperature:.3f}")
    console.print(f"TTA views: {', '.join(b.tta.views)} ({b.tta.average} average); ensemble temperature {b.ensemble_temperature:.3f}")
    if v is not None and v.calibrated is not None and v.uncalibrated is not None:  # build_bundle writes both
        cal, uncal = v.calibrated, v.uncalibrated
        console.print(
            f"validation BACC {cal.bacc:.3f}; NLL {uncal.nll:.3f} -> {cal.nll:.3f}; ECE {uncal.ece:.3f} -> {cal.ece:.3f}"
        )
    console.print(f"bundle: {b.path}  (next: skinlesion calibrate {b.path} --targets MEL:sens=0.85,spec=0.85)")


def calibrate_command(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    targets: list[str] = typer.Option(..., "--targets", "-t", help="CLASS:sens=0.85,spec=0.85 (repeat or space-separate)."),
    confidence: float = typer.Option(0.95, "--confidence", help="Targets must hold on this one-sided lower bound; 0 = point estimates."),
    bound: str = typer.Option("clopper-pearson", "--bound", help="clopper-pearson or wilson."),
    prefer: str = typer.Option("balanced", "--prefer", help="Among feasible thresholds: balanced, sensitivity or specificity."),
    fallback: str = typer.Option("keep_sensitivity", "--fallback", help="When infeasible: keep_sensitivity, keep_specificity, youden, none."),
    priority: str | None = typer.Option(None, "--priority", help="Clinical priority, e.g. MEL,BCC,AKIEC (default: most dangerous first)."),
    conflict: str = typer.Option("priority", "--conflict", help="Several thresholds fire: priority order, or largest p/threshold (ratio)."),
    policy: str = typer.Option(
        "diagnosis", "--policy", help="What the decision is: the diagnosis fitted for balanced accuracy (diagnosis), "
        "or the reference system's rule, the first class in priority order whose threshold fired (priority-threshold)."
    ),
    class_bias: bool | None = typer.Option(
        None, "--class-bias/--no-class-bias", help="Refit the ensemble temperature on the held-out predictions with "
        "(or without) per-class biases (bias-corrected temperature scaling); default: keep the bundle's. A review flag "
        "must then be refitted (skinlesion explain review)."
    ),
    ood: bool = typer.Option(
        True, "--ood/--no-ood", help="(Re)fit the out-of-distribution gate on the training images (needs the dataset); "
        "--no-ood keeps the gate the bundle has."
    ),
    ood_score: str = typer.Option("knn", "--ood-score", help="OOD score: knn, mahalanobis, energy, msp, or names joined by +."),
    data_root: str | None = typer.Option(
        None, "--data-root", help="Dataset folder, when not where the members were trained (bundles with metadata "
        "fusion members rerun them on the validation images with the metadata hidden; the OOD gate reads training images)."
    ),
) -> None:
    """Fit the decision on validation (or out-of-fold) predictions only and record it in the bundle.

    Per-class thresholds for the clinical targets (the class flags), the diagnosis rule fitted for
    balanced accuracy, the malignancy referral (malignant sensitivity >= 0.95, lower bound), the
    out-of-distribution gate, and which rule gives the decision (--policy).

    A bundle with metadata fusion members also gets a second operating point (temperature,
    thresholds, diagnosis rule, referral) fitted with the metadata hidden, used for images given without metadata."""
    from skinlesion.calibration.thresholds import parse_targets
    from skinlesion.ensemble.build import calibrate_bundle

    with user_errors():
        parsed = parse_targets([t for item in targets for t in item.split()])
        decision = calibrate_bundle(
            bundle, parsed, confidence=confidence or None, bound=bound, prefer=prefer, fallback=fallback,
            priority=priority.split(",") if priority else None, conflict=conflict, data_root=data_root,
            policy=policy, class_bias=class_bias, ood=ood, ood_score=ood_score,
        )
    for c, t in decision["thresholds"].items():
        thr = "none" if t["threshold"] is None else f"{t['threshold']:.4f}"
        console.print(
            f"{c:<6} threshold {thr}  validation sensitivity {t['sensitivity']:.3f} (lower bound {t['sensitivity_lower']:.3f}), "
            f"specificity {t['specificity']:.3f} (lower bound {t['specificity_lower']:.3f})  -> {t['status']} ({t['rule']})"
            if t["threshold"] is not None
            else f"{c:<6} no threshold -> {t['status']} ({t['rule']})"
        )
        if t["status"] != "met":
            console.print(f"       [yellow]{escape(t['reason'])}[/]")
    console.print(
        f"priority-threshold rule: {' > '.join(decision['priority'])}; its validation BACC {decision['validation']['bacc']:.3f}"
    )
    d = decision["diagnosis"]
    console.print(
        f"diagnosis rule: {escape(d['selection']['why'])}; held-out BACC argmax {d['bacc_argmax']:.3f} -> rule {d['bacc']:.3f} "
        "(in-sample; the cross-validated figures are in bundle.json)"
    )
    r = decision.get("referral")
    if r:
        console.print(
            f"referral: malignant probability >= {r['threshold']:.4f}: held-out malignant sensitivity {r['sensitivity']:.3f} "
            f"(lower bound {r['sensitivity_lower']:.3f}), specificity {r['specificity']:.3f} -> {r['status']}"
        )
    g = decision.get("ood")
    if g:
        console.print(
            f"out-of-distribution gate: {g['score']} of {g['members']}, threshold {g['threshold']:.4f} "
            f"({100 * g['heldout_gated_fraction']:.1f}% of held-out images gated)"
        )
    console.print(f"policy: the decision is the {decision['policy']} rule's")
    nm = decision.get("without_metadata")
    if nm:
        thr = ", ".join(f"{c} {'none' if t['threshold'] is None else format(t['threshold'], '.4f')} ({t['status']})"
                        for c, t in nm["thresholds"].items())
        console.print(
            f"without metadata (fitted on validation with metadata hidden): thresholds {thr}; validation BACC "
            f"{nm['validation']['bacc']:.3f} (the with-metadata point gives {nm['validation_with_metadata_point']['bacc']:.3f})"
        )
