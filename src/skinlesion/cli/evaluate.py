"""``skinlesion evaluate CHECKPOINT --split test``."""

from __future__ import annotations

from pathlib import Path

import typer

from skinlesion.cli._common import console, user_errors


def _fmt(x: object) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder (or its run folder), or a decision bundle."),
    split: str = typer.Option("test", "--split", help="train, val or test of the model's manifest."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default <run>/eval-<split>)."),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Evaluate on another split manifest."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples (by lesion) for 95% intervals."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
) -> None:
    """Write metrics.json, predictions.csv (ISIC submission format) and report.html."""
    from skinlesion.ensemble.bundle import is_bundle
    from skinlesion.evaluation import evaluate_checkpoint

    if is_bundle(checkpoint):
        if manifest is not None:
            with user_errors():
                raise ValueError("--manifest applies to checkpoints; a bundle is evaluated on its own manifest")
        _evaluate_bundle(checkpoint, split, out, data_root, n_boot, batch_size)
        return

    with user_errors():
        res = evaluate_checkpoint(
            checkpoint, split=split, out_dir=out, data_root=data_root, manifest=manifest, n_boot=n_boot, batch_size=batch_size
        )
    m, ci = res["metrics"], res["intervals"] or {}

    def line(name: str, key: str) -> str:
        iv = ci.get(key) or {}
        return f"{name:<16} {_fmt(m.get(key))}  [{_fmt(iv.get('low'))}, {_fmt(iv.get('high'))}]"

    console.print(f"{split} split: {res['provenance']['n_images']} images, {res['provenance']['n_groups']} lesions")
    console.print(line("BACC", "bacc"))
    console.print(line("malignant BACC", "malignant_bacc"))
    mel = m.get("per_class", {}).get("MEL")
    if mel:
        console.print(f"MEL sensitivity {_fmt(mel.get('sensitivity'))}  specificity {_fmt(mel.get('specificity'))}")
    console.print(f"report: {Path(res['out_dir']) / 'report.html'}")


def _rates_text(row: dict) -> str:  # type: ignore[type-arg]
    """Sensitivity and specificity with intervals and targets, of a flag or referral row."""
    parts = []
    for key in ("sensitivity", "specificity"):
        ci = row[f"{key}_ci"] or [None, None]
        goal = row[f"target_{key}"]
        verdict = f" (target {goal}: {'met' if row[f'{key}_met'] else 'NOT met'})" if goal else ""
        parts.append(f"{key} {_fmt(row[key])} [{_fmt(ci[0])}, {_fmt(ci[1])}]{verdict}")
    return ", ".join(parts)


def _evaluate_bundle(bundle: Path, split: str, out: Path | None, data_root: str | None, n_boot: int, batch_size: int) -> None:
    from skinlesion.evaluation import evaluate_bundle

    with user_errors():
        res = evaluate_bundle(bundle, split=split, out_dir=out, data_root=data_root, n_boot=n_boot, batch_size=batch_size)
    prov = res["provenance"]
    console.print(f"{split} split: {prov['n_images']} images, {prov['n_groups']} lesions" + (" (IN-SAMPLE)" if prov["in_sample"] else ""))
    for label, key in (("BACC", "bacc"), ("malignant BACC", "malignant_bacc")):
        a, g, d = (res[part]["metrics"][key] for part in ("argmax", "diagnosis", "decision"))
        console.print(f"{label:<16} argmax {_fmt(a)}   diagnosis {_fmt(g)}   priority-threshold rule {_fmt(d)}")
    gain = res["diagnosis"]["gain_over_argmax"]
    console.print(
        f"diagnosis - argmax BACC {gain['estimate']:+.3f}"
        + (f" [{gain['low']:+.3f}, {gain['high']:+.3f}]" if gain.get("low") is not None else "")
        + f"; the decision is the {res['policy']} rule's"
    )
    c = res["calibration"]
    console.print(f"ECE {_fmt(c['ece_before'])} -> {_fmt(c['ece_after'])}, NLL {_fmt(c['nll_before'])} -> {_fmt(c['nll_after'])} (temperature scaling)")
    for f in res["flags"]:
        console.print(f"{f['class']:<6} flag (p >= {f['threshold']:.4f}): " + _rates_text(f))
    if res.get("referral"):
        r = res["referral"]
        console.print(f"referral (malignant p >= {r['threshold']:.4f}, {100 * r['referred_fraction']:.1f}% referred): " + _rates_text(r))
    if res.get("ood"):
        o = res["ood"]
        console.print(f"out-of-distribution gate: {o['gated']} of {o['n_images']} images gated ({100 * o['gated_fraction']:.1f}%)")
    for t in res["targets"]:
        ci_s, ci_p = t["sensitivity_ci"] or [None, None], t["specificity_ci"] or [None, None]
        console.print(
            f"{t['class']:<6} priority-threshold rule: sensitivity {_fmt(t['sensitivity'])} [{_fmt(ci_s[0])}, {_fmt(ci_s[1])}] "
            f"(target {t['target_sensitivity']}: {'met' if t['sensitivity_met'] else 'NOT met'}), specificity "
            f"{_fmt(t['specificity'])} [{_fmt(ci_p[0])}, {_fmt(ci_p[1])}] (target {t['target_specificity']}: "
            f"{'met' if t['specificity_met'] else 'NOT met'})"
        )
    console.print(f"report: {Path(res['out_dir']) / 'report.html'}")
