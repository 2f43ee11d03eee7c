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


def _evaluate_bundle(bundle: Path, split: str, out: Path | None, data_root: str | None, n_boot: int, batch_size: int) -> None:
    from skinlesion.evaluation import evaluate_bundle

    with user_errors():
        res = evaluate_bundle(bundle, split=split, out_dir=out, data_root=data_root, n_boot=n_boot, batch_size=batch_size)
    prov = res["provenance"]
    console.print(f"{split} split: {prov['n_images']} images, {prov['n_groups']} lesions" + (" (IN-SAMPLE)" if prov["in_sample"] else ""))
    for label, key in (("BACC", "bacc"), ("malignant BACC", "malignant_bacc")):
        a = res["argmax"]["metrics"][key]
        d = res["decision"]["metrics"][key]
        console.print(f"{label:<16} argmax {_fmt(a)}   decision rule {_fmt(d)}")
    c = res["calibration"]
    console.print(f"ECE {_fmt(c['ece_before'])} -> {_fmt(c['ece_after'])}, NLL {_fmt(c['nll_before'])} -> {_fmt(c['nll_after'])} (temperature scaling)")
    for t in res["targets"]:
        ci_s, ci_p = t["sensitivity_ci"] or [None, None], t["specificity_ci"] or [None, None]
        console.print(
            f"{t['class']:<6} sensitivity {_fmt(t['sensitivity'])} [{_fmt(ci_s[0])}, {_fmt(ci_s[1])}] (target {t['target_sensitivity']}: "
            f"{'met' if t['sensitivity_met'] else 'NOT met'}), specificity {_fmt(t['specificity'])} [{_fmt(ci_p[0])}, {_fmt(ci_p[1])}] "
            f"(target {t['target_specificity']}: {'met' if t['specificity_met'] else 'NOT met'})"
        )
        if t.get("one_vs_rest_sensitivity") is not None:
            console.print(
                f"       one-vs-rest p >= {t['threshold']:.4f} before priority conflicts: sensitivity "
                f"{_fmt(t['one_vs_rest_sensitivity'])}, specificity {_fmt(t['one_vs_rest_specificity'])}"
            )
    console.print(f"report: {Path(res['out_dir']) / 'report.html'}")
