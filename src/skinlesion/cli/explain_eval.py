"""``faithfulness`` (CAM deletion/insertion over a split) and ``review`` (fit the review flag) commands.

Plain functions with typer parameters; they are registered on the explain sub-app in :mod:`skinlesion.cli.explain`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from skinlesion.cli._common import console, user_errors


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _p(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2g}"


def _write_json(out: Path, result: dict[str, Any]) -> None:
    from skinlesion.metrics.classification import to_jsonable

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_jsonable(result), indent=2))
    console.print(f"written: {out}")


def faithfulness_command(
    bundle: Path | None = typer.Option(None, "--bundle", "-b", help="Decision bundle folder."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="Or a single checkpoint folder."),
    split: str = typer.Option("test", "--split", help="train, val or test of the model's own manifest."),
    n: int = typer.Option(100, "--n", min=1, help="Lesions to sample (one image each, stratified by class)."),
    method: str | None = typer.Option(
        None, "--method", help="gradcam, gradcam++, layercam, hirescam or eigencam (default: the backbone's measured default)."
    ),
    steps: int = typer.Option(20, "--steps", min=1, help="Deletion/insertion steps."),
    baseline: str = typer.Option("blur", "--baseline", help="What removed pixels become: blur, zero or mean."),
    n_random: int = typer.Option(5, "--n-random", min=1, help="Random maps per image (the reference)."),
    random_kind: str = typer.Option("smooth", "--random-kind", help="uniform, shuffle or smooth random maps."),
    mask_source: str = typer.Option("auto", "--mask-source", help="auto, truth, bbox or segmentation lesion masks."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples (by lesion) for the intervals."),
    seed: int = typer.Option(0, "--seed"),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the full result (per-image records too) as JSON."),
) -> None:
    """Are the ensemble's CAMs faithful? Deletion/insertion vs random maps, and mass inside the lesion."""
    from skinlesion.ensemble.bundle import load_model_source
    from skinlesion.explain.faithfulness_split import faithfulness_over_split

    with user_errors():
        model = load_model_source(bundle=bundle, checkpoint=checkpoint)
        res = faithfulness_over_split(
            model, split=split, n=n, method=method, steps=steps, baseline=baseline, n_random=n_random,
            random_kind=random_kind, mask_source=mask_source, seed=seed, data_root=data_root, n_boot=n_boot,
        )
    s = res["summary"]
    counts = ", ".join(f"{c} {v}" for c, v in res["class_counts"].items())
    console.print(f"{split}: {res['n']} images of {res['n_lesions']} lesions ({counts}); {method}; {res['seconds']:.0f} s")
    rows = (("deletion AUC (lower is better)", "deletion", "random"),
            ("insertion AUC (higher is better)", "insertion", "random"),
            ("mass in lesion mask", "mass_in_mask", "area fraction"))
    for label, key, ref in rows:
        r = s.get(key)
        if r is None:
            continue
        console.print(
            f"{label:<33} {_f(r['mean'])} vs {ref} {_f(r['reference'])}: difference {_f(r['difference'])} "
            f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}], p = {_p(r['p_value'])}, n = {r['n']}"
        )
    used = ", ".join(f"{k} {v}" for k, v in res["mask_source"]["used"].items())
    console.print(f"lesion masks: {used}")
    if out is not None:
        _write_json(out, res)


def review_command(
    bundle: Path = typer.Argument(
        ..., help="Decision bundle folder (bundle.json gets a 'review' entry), or a checkpoint (report only)."
    ),
    method: str = typer.Option(
        "mc_dropout", "--method",
        help="mc_dropout: score by MC-dropout passes; ensemble: by the members x TTA views the prediction already computes "
        "(no extra passes at prediction time).",
    ),
    n_samples: int = typer.Option(20, "--n-samples", min=1, help="MC-dropout passes per member (method mc_dropout)."),
    score: str = typer.Option(
        "mutual_information", "--score",
        help="mutual_information, predictive_entropy, expected_entropy, predicted_class_variance, max_prob, decision_prob "
        "(probability of the class the bundle decided), or auto (the one with the lowest validation AURC).",
    ),
    goal: str = typer.Option("error_fraction", "--goal", help="error_fraction, coverage or risk."),
    target: float = typer.Option(0.5, "--target", help="Fraction of errors to catch / review budget / max risk."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    data_root: str | None = typer.Option(None, "--data-root", help="Dataset folder, if it moved since training."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report only; do not write bundle.json."),
    test: bool = typer.Option(True, "--test/--no-test", help="Also report the flag on the test split (nothing fitted uses it)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the full result as JSON."),
) -> None:
    """Fit on validation the uncertainty threshold that sends cases to a clinician; report it on test.

    A bundle with a without-metadata operating point also gets a threshold fitted with the metadata hidden."""
    from skinlesion.uncertainty.review_fit import fit_review_flag

    with user_errors():
        res = fit_review_flag(
            bundle, n_samples=n_samples, score=score, goal=goal, target=target, seed=seed, data_root=data_root,
            batch_size=batch_size, persist=not dry_run, test=test, method=method,
        )
    points = [("", res)]
    if res.get("without_metadata"):
        points.append(("without metadata: ", res["without_metadata"]))
    for label, point in points:
        v, t = point["validation"], point.get("test")
        thr = "none (flags nothing)" if point["threshold"] is None else f"{point['threshold']:.4g}"
        console.print(f"{label}score {res['score']}, goal {goal} = {target}: flag when {res['flag_when']}, threshold {thr} "
                      f"(fitted on {point.get('fitted_on', 'val')})")
        if method == "mc_dropout" and not v["stochastic"]:
            console.print("[yellow]no dropout was active: the score only reflects disagreement between members[/]")
        for name, r in (("val (in-sample)", v), ("test", t)):
            if r is None:
                continue
            console.print(
                f"{name:<16} flagged {_f(r['flagged_fraction'])}, errors removed {_f(r['errors_removed'])}; accuracy "
                f"{_f(r['accuracy'])} -> unflagged {_f(r['accuracy_unflagged'])} (flagged {_f(r['accuracy_flagged'])}); "
                f"BACC {_f(r['bacc'])} -> unflagged {_f(r['bacc_unflagged'])}"
            )
    t = res.get("test")
    if t is not None:
        console.print("test risk-coverage (lower is better): score  AURC  E-AURC  risk@0.5/0.8/0.9/1.0")
        for s, r in t["risk_coverage"].items():
            at = "/".join(_f(x) for x in r["risk_at_coverage"].values())
            console.print(f"  {s:<20} {_f(r['aurc'], 4)}  {_f(r['e_aurc'], 4)}  {at}")
        console.print(f"optimal AURC on test {_f(next(iter(t['risk_coverage'].values()))['optimal_aurc'], 4)}")
    if res["persisted"]:
        console.print(f"review flag saved in {res['bundle']}/bundle.json")
    else:
        console.print("bundle.json not changed" + (" (--dry-run)" if dry_run else " (a checkpoint has none)"))
    if out is not None:
        _write_json(out, res)
