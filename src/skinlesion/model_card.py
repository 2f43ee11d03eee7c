"""The model card of a recipe's bundle (``MODEL_CARD.md``), written from what the run recorded.

Every number comes from a file of the run: ``recipe_state.json`` (steps, wall times, member and
baseline validation BACC), ``bundle/bundle.json`` (weights, temperature, thresholds, review flag,
validation metrics) and ``eval-<split>/metrics.json`` (the one look at the test split, with
lesion-bootstrap intervals). ``quality.json`` (from ``bench/quality.py``) is added when present.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import skinlesion
from skinlesion._params import hw_text

NOTICE = (
    "Decision support for research use, not a diagnosis. This model has not been validated outside "
    "the data it was trained on; a clinician must interpret every output."
)


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else f"{float(x):.{nd}f}"


def _ci(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("estimate") is None:
        return "n/a"
    return f"{iv['estimate']:.3f} [{_f(iv.get('low'))}, {_f(iv.get('high'))}]"


def _pair(ci: Any) -> str:
    return "[n/a]" if not ci else f"[{_f(ci[0])}, {_f(ci[1])}]"


def _delta(a: Any, b: Any) -> str:
    return "n/a" if a is None or b is None else f"{float(a) - float(b):+.3f}"


_DATA_TEXT = {
    "isic2018": "ISIC 2018 Task 3 training set: the HAM10000 images (Tschandl, Rosendahl & Kittler, Sci. Data 2018; "
    "Codella et al., arXiv:1902.03368), licensed **CC BY-NC 4.0**: the weights are derived from it, so non-commercial "
    "use only. Lesion ids from HAM10000_metadata.csv (the official lesion groupings).",
    "isic2019": "ISIC 2019 training set: HAM10000 (Tschandl et al. 2018), BCN20000 (Combalia et al., arXiv:1908.02288) "
    "and MSK (Codella et al. 2017) images, licensed **CC BY-NC 4.0**: the weights are derived from it, so "
    "non-commercial use only. Lesion ids from ISIC_2019_Training_Metadata.csv; images without one are their own group.",
}


def _training_data(out: Path) -> tuple[str, bool]:
    """The dataset format of the bundle's first member, and whether it is a smoke run's generated data."""
    for f in sorted((out / "bundle" / "members").glob("*/checkpoint.json")):
        data = (json.loads(f.read_text()).get("config") or {}).get("data") or {}
        paths = " ".join(str(data.get(k) or "") for k in ("root", "ground_truth", "images"))
        return str(data.get("format", "ham10000")), "smoke-data" in paths
    return "ham10000", False


def write_model_card(out: Path, recipe: Any, recipe_path: Path) -> Path:
    """Write ``out/bundle/MODEL_CARD.md``; returns its path."""
    from skinlesion._timing import wall_seconds

    out = Path(out)
    state = json.loads((out / "recipe_state.json").read_text())
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    split = recipe.evaluate.split
    metrics_file = out / f"eval-{split}" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    steps = state.get("steps", {})
    lines: list[str] = []
    add = lines.append

    add(f"# Model card: `{bundle.get('name')}` (skinlesion {skinlesion.__version__})\n")
    add(f"> **{NOTICE}**\n")
    add(f"Bundle id (sha256 of bundle.json at the time of this card): see `skinlesion serve` `/model` or the `bundle_id` column of predictions; built {bundle.get('created', '?')}.\n")

    add("## Model\n")
    add("| member | backbone | input (H x W) | metadata | weight | val BACC (TTA) |")
    add("|---|---|---|---|---|---|")
    for m in bundle["members"]:
        pre = m.get("preprocessing") or {}
        size = hw_text(pre.get("input_size")) or "?"
        if pre.get("trained_input_size"):
            size += f" (trained at {hw_text(pre['trained_input_size'])})"
        feats = _member_metadata(out, m)
        add(f"| {m['name']} | {m['backbone']} | {size} | {feats or 'none'} | {m['weight']:.3f} | {_f(m.get('validation', {}).get('bacc'))} |")
    tta = bundle["tta"]
    add(f"\nTest-time augmentation: {', '.join(tta['views'])} ({tta['average']} average). Temperature: "
        f"{bundle['temperature']['mode']} ({_f(bundle['temperature'].get('ensemble'))}).")
    dec = bundle["decision"]
    add(f"\nDecision rule: {dec.get('description', dec.get('rule'))} Priority: {', '.join(dec.get('priority') or [])}; "
        f"conflict rule: {dec.get('conflict', 'priority')}.\n")
    add("| class | threshold | target sens / spec | on validation | how chosen |")
    add("|---|---|---|---|---|")
    for c, t in dec.get("thresholds", {}).items():
        add(f"| {c} | {_f(t.get('threshold'), 4)} | {t.get('target_sensitivity')} / {t.get('target_specificity')} | "
            f"{t.get('status')} (sens {_f(t.get('sensitivity'))}, lower bound {_f(t.get('sensitivity_lower'))}; spec "
            f"{_f(t.get('specificity'))}, lower bound {_f(t.get('specificity_lower'))}) | {t.get('rule')}"
            + (f": {t['reason']}" if t.get("reason") else "") + " |")
    _decision_parts(add, dec)
    _review(add, bundle.get("review"), split)

    add("\n## Training data and licence\n")
    prov = bundle.get("provenance", {})
    fmt, smoke = _training_data(out)
    classes = list(bundle.get("classes") or [])
    if smoke:
        add(f"**SMOKE RUN**: tiny generated images in the official {fmt} file layout and tiny random-init networks. "
            "It proves that every step runs; its numbers mean nothing.")
    elif fmt in _DATA_TEXT:
        add(_DATA_TEXT[fmt])
    else:
        add("HAM10000 (Tschandl, Rosendahl & Kittler, Sci. Data 2018), licensed **CC BY-NC 4.0**: the weights are "
            "derived from it, so non-commercial use only. Copy used: 8,511 images at 200x150 px with metadata "
            "(age, sex, anatomical site).")
    add(f"Lesion-disjoint split (no lesion has images on two sides), split hash `{prov.get('split_hash')}`; "
        f"validation {prov.get('n_val')} images / {prov.get('n_val_groups')} lesions"
        + (f"; {split} {metrics['provenance']['n_images']} images / {metrics['provenance']['n_groups']} lesions" if metrics else "")
        + ". Thresholds, temperature, member weights and the review flag were fitted on validation only; the test split was used once, for this card.\n")
    cv = bundle.get("cross_fitting")
    if cv:
        add(f"**Cross-fitted.** The non-test images are cut into {cv.get('k')} lesion-grouped folds; each member was "
            "trained on the other folds and predicts its own fold, so the 'validation' above is out-of-fold: every "
            f"non-test image ({prov.get('n_val')}) predicted by the one member that never saw it. Members' folds: "
            + ", ".join(f"{name} = fold {f}" for name, f in cv.get("member_folds", {}).items())
            + ". What is fitted on these single-member predictions is applied to the average of all members.\n")

    add("## Recipe\n")
    add(f"`skinlesion recipe run {recipe_path.stem} --out OUT` ({recipe_path.name}: {recipe.description.strip()})\n")
    add("| step | wall minutes |")
    add("|---|---|")
    timed = {name: s for name, s in steps.items() if name != "card"}  # a card rewritten later: its own step is not counted
    for name, s in timed.items():
        add(f"| {name}{' (side by side)' if s.get('concurrent') else ''} | {float(s.get('seconds', 0)) / 60:.1f} |")
    total = wall_seconds(timed) / 60
    beside = " trainings marked side by side ran in parallel processes (`--jobs`): their overlap counts once;" if any(
        s.get("concurrent") for s in timed.values()) else ""
    add(f"\nTotal recorded wall time: {total:.1f} min (budget {recipe.budget_minutes:.0f} min;{beside} the card step "
        "itself is not counted).")
    reference = {f"train:{recipe.baseline.name}" if recipe.baseline else "", "evaluate"}
    bundle_min = wall_seconds({name: s for name, s in timed.items() if name not in reference}) / 60
    add(f"Of this, the shipped bundle itself (members, build, calibrate, review) took {bundle_min:.1f} min; the rest "
        "is the image-only baseline and the test evaluation, which only serve this card.\n")

    _choices(add, bundle, recipe, steps, tta, dec)

    _training_curves(add, out, recipe)
    _ablation(add, out)
    _levers(add, out)
    _fold_ablations(add, out)
    _review_scores(add, out)
    _faithfulness(add, out)
    _concepts(add, out)

    if metrics:
        add(f"## Results on the lesion-disjoint {split} split (95% lesion-bootstrap intervals)\n")
        a, d = metrics["argmax"], metrics["decision"]
        g = metrics.get("diagnosis") or a
        policy = metrics.get("policy", "priority-threshold")
        add(f"| | argmax | diagnosis{' (shipped)' if policy == 'diagnosis' else ''} | priority-threshold rule"
            f"{' (shipped)' if policy == 'priority-threshold' else ''} |")
        add("|---|---|---|---|")
        for key, label in (("bacc", "BACC"), ("malignant_bacc", "malignant BACC")):
            add(f"| {label} | {_ci(a['intervals'].get(key))} | {_ci(g['intervals'].get(key))} | {_ci(d['intervals'].get(key))} |")
        for c in bundle["classes"]:
            add(f"| {c} sensitivity / specificity | {_ci(a['intervals'].get(f'sensitivity_{c}'))} / {_ci(a['intervals'].get(f'specificity_{c}'))} "
                f"| {_ci(g['intervals'].get(f'sensitivity_{c}'))} / {_ci(g['intervals'].get(f'specificity_{c}'))} "
                f"| {_ci(d['intervals'].get(f'sensitivity_{c}'))} / {_ci(d['intervals'].get(f'specificity_{c}'))} |")
        aucs = [f"{c} {_ci(a['intervals'][f'auc_{c}'])}" for c in bundle["classes"] if a["intervals"].get(f"auc_{c}")]
        if aucs:
            add(f"\nOne-vs-rest AUC of the probabilities: {'; '.join(aucs)}.")
        gain = (metrics.get("diagnosis") or {}).get("gain_over_argmax")
        if gain:
            add(f"\nDiagnosis minus argmax BACC on the same images: {_f(gain.get('estimate'))} {_pair([gain.get('low'), gain.get('high')])} "
                "(paired lesion bootstrap).")
        _flag_results(add, metrics)
        cal = metrics.get("calibration", {})
        add(f"\nECE {_f(cal.get('ece_before'))} before and {_f(cal.get('ece_after'))} after temperature scaling "
            f"(NLL {_f(cal.get('nll_before'))} -> {_f(cal.get('nll_after'))}).\n")
        add("Clinical targets on this split (priority-threshold rule):\n")
        for t in metrics.get("targets", []):
            add(f"- {t['class']}: sensitivity {_f(t.get('sensitivity'))} {_pair(t.get('sensitivity_ci'))} (target {t.get('target_sensitivity')}) "
                f"{'met' if t.get('sensitivity_met') else 'NOT met'}; specificity {_f(t.get('specificity'))} {_pair(t.get('specificity_ci'))} "
                f"(target {t.get('target_specificity')}) {'met' if t.get('specificity_met') else 'NOT met'}.")
        add("")
    _without_metadata(add, bundle, metrics, split)
    quality = out / "quality.json"
    if quality.is_file():
        _quality_table(add, json.loads(quality.read_text()))

    add("## Intended use\n")
    n_words = {7: "seven", 8: "eight"}.get(len(classes), str(len(classes)))
    add(f"Research and decision support for clinicians reading dermoscopic images of the {n_words} diagnoses "
        f"({', '.join(classes)}): a second opinion with its uncertainty, attention map and ABCDE "
        "measurements, never a diagnosis and never without a clinician.\n")
    add("## Limitations\n")
    if fmt == "isic2019":
        add("- Three sources (Vienna, Barcelona, New York), mostly fair skin; no external validation beyond the "
            "official test set, if it was scored.")
    else:
        add("- Single source: HAM10000 (two sites, Vienna and Queensland), mostly fair skin; no external validation.")
    if fmt == "ham10000":
        add("- Trained and evaluated on 200x150 px copies and a small CPU-trained network: BACC is far below the "
            "ISIC 2018 leaderboard; small classes (DF, VASC, AKIEC) have wide intervals.")
    else:
        add("- Lesion-disjoint split: not comparable with results on image-level splits or the challenge leaderboards.")
    outside = "unknown lesions (UNK)" if "SCC" in classes else "e.g. SCC, unknown lesions"
    add(f"- Lesions outside the {n_words} classes ({outside}) are forced into one of them; the out-of-distribution "
        "gate catches only some.")
    if dec.get("without_metadata"):
        add("- Metadata (age, sex, site) helps only if entered correctly; without it the model uses its 'missing' "
            "input (trained with metadata dropout) and the separate operating point fitted with the metadata hidden "
            "(see \"Without patient metadata\").")
    else:
        add("- Metadata (age, sex, site) helps only if entered correctly; without it the model uses its 'missing' "
            "input (trained with metadata dropout) and its thresholds were calibrated with metadata present.")
    add("- Thresholds meet targets on validation bounds; on the test split some targets are missed (see above).")
    path = out / "bundle" / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path


QUALITY_KEYS = ("bacc", "malignant_bacc", "sensitivity_MEL", "specificity_MEL", "sensitivity_AKIEC", "specificity_AKIEC")


def _quality_table(add: Any, q: dict[str, Any]) -> None:
    """``bench/quality.py``'s rows side by side (value [95% interval]), from a plain baseline to the
    shipped configuration, on the same lesion resamples."""
    add("## Benchmark (`bench/quality.py`): plain baseline vs the shipped bundle\n")
    add(f"Test split, {q.get('n_images')} images / {q.get('n_lesions')} lesions"
        + (" (SUBSAMPLED: a smoke run)" if q.get("subsampled") else "")
        + f"; {q.get('bootstrap', {}).get('n_boot')} paired lesion-bootstrap resamples (95% intervals).\n")
    names = {"bacc": "BACC", "malignant_bacc": "malignant BACC"}
    add("| row | what | " + " | ".join(names.get(k, k.replace("_", " ")) for k in QUALITY_KEYS) + " |")
    add("|---|---|" + "---|" * len(QUALITY_KEYS))
    for name, row in q.get("rows", {}).items():
        cells = []
        for k in QUALITY_KEYS:
            v = row.get(k)
            cells.append(f"{_f(v.get('value'))} {_pair(v.get('ci95'))}" if isinstance(v, dict) else "-")
        add(f"| {name} | {row.get('description', '')} | " + " | ".join(cells) + " |")
    add("")


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``[(epoch (1-based), val BACC)]`` from a training run's ``logs/metrics.csv`` (Lightning CSVLogger)
    and the logs a resume set aside (``logs/metrics.before-resume-N.csv``, oldest first); empty when
    the run has no such log. A resumed run may log an epoch twice: the last value is kept."""
    logs = Path(run_dir) / "logs"
    earlier = sorted(logs.glob("metrics.before-resume-*.csv"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    curve: dict[int, float] = {}
    for path in [*earlier, logs / "metrics.csv"]:
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                v = (row.get("val_bacc") or "").strip()
                if v:
                    curve[int(row["epoch"]) + 1] = float(v)
    return sorted(curve.items())


def _choices(add: Any, bundle: dict[str, Any], recipe: Any, steps: dict[str, Any], tta: dict[str, Any],
             dec: dict[str, Any]) -> None:
    """What each fitted choice did to validation BACC, each row comparing like with like: raw (temperature 1)
    argmax against raw, calibrated against calibrated, and the shipped decision against the calibrated argmax.

    A cross-fitted bundle's validation rows are out-of-fold: each is predicted by one member, so no
    ensemble is ever seen there and the ensemble's effect is left to the test levers (``levers.json``)."""
    add("## Choices and their effect on validation BACC\n")
    add("| choice | with | without | change |")
    add("|---|---|---|---|")
    base = steps.get(f"train:{recipe.baseline.name}") if recipe.baseline else None
    for m in recipe.members:
        s = steps.get(f"train:{m.name}", {})
        if base is not None:
            add(f"| member {m.name} ({', '.join(m.set)}) vs baseline {recipe.baseline.name} ({', '.join(recipe.baseline.set) or 'preset'}) "
                f"| {_f(s.get('val_bacc'))} | {_f(base.get('val_bacc'))} | {_delta(s.get('val_bacc'), base.get('val_bacc'))} |")
    val = bundle.get("validation", {})
    raw = val.get("uncalibrated", {}).get("bacc")
    cal = val.get("calibrated", {}).get("bacc")
    n = len(bundle["members"])
    member_bacc = [b for b in (m.get("validation", {}).get("bacc") for m in bundle["members"]) if b is not None]
    cross_fitted = bool(bundle.get("cross_fitting"))
    biased = bool((bundle.get("temperature") or {}).get("bias"))
    if member_bacc and not cross_fitted:
        best = max(member_bacc)
        add(f"| ensemble of {n} vs best member (both raw argmax, TTA) | {_f(raw)} | {_f(best)} | {_delta(raw, best)} |")
    ident = (val.get("identity_view_only") or {}).get("bacc")
    add(f"| TTA ({len(tta['views'])} views) vs identity view (calibrated argmax) | {_f(cal)} | {_f(ident)} | {_delta(cal, ident)} |")
    add(f"| temperature{' and class biases' if biased else ''} vs none (argmax) | {_f(cal)} | {_f(raw)} | {_delta(cal, raw)} |")
    diag = dec.get("diagnosis") or {}
    if diag.get("bacc") is not None:
        add(f"| diagnosis rule (per-class log-weights, in-sample) vs calibrated argmax | {_f(diag.get('bacc'))} | {_f(cal)} | "
            f"{_delta(diag.get('bacc'), cal)} |")
    dv = dec.get("validation") or {}
    if dv.get("bacc") is not None:
        add(f"| class thresholds (priority rule) vs calibrated argmax | {_f(dv.get('bacc'))} | {_f(cal)} | {_delta(dv.get('bacc'), cal)} |")
    notes = []
    if cross_fitted:
        notes.append(
            f"**Out-of-fold rows.** Each validation image is predicted by the one member that did not train on it, so "
            f"these rows are single-member predictions and say nothing about averaging the {n} members; the ensemble's "
            "effect is measured on test in the levers table below. Members' own-fold BACC (raw argmax, TTA): "
            + (f"{min(member_bacc):.3f} to {max(member_bacc):.3f}; " if member_bacc else "") + f"all rows pooled: {_f(raw)}.")
    if biased:
        notes.append("The class biases fitted with the temperature restore the class frequencies (better NLL and ECE, "
                     "lower argmax BACC); the decision rules re-balance from there.")
    if diag.get("selection"):
        notes.append("The diagnosis rule's cross-validated gain, free of its in-sample fit, is in the decision section above.")
    policy = dec.get("policy") or "priority-threshold"
    notes.append(f"The shipped decision is the **{policy}** rule"
                 + ("; the class thresholds give the flags shown beside it." if policy == "diagnosis" else "."))
    add("\n" + " ".join(notes) + "\n")
    add(f"Temperature on validation: NLL {_f(val.get('uncalibrated', {}).get('nll'))} -> {_f(val.get('calibrated', {}).get('nll'))}, "
        f"ECE {_f(val.get('uncalibrated', {}).get('ece'))} -> {_f(val.get('calibrated', {}).get('ece'))}. One training run per "
        f"setting: differences of a few hundredths are within run-to-run noise on {_count(bundle.get('provenance', {}).get('n_val'))} "
        "validation images.\n")


def _kept_epoch(run_dir: Path) -> tuple[str | None, int | None, int | None, dict[str, Any]]:
    """``(keep mode, epoch kept, epochs completed, training record)`` from a trained model's
    ``checkpoint/checkpoint.json`` (``train.keep``: ``last`` or ``best``; ``training.best_epoch`` is the
    epoch whose weights were saved)."""
    path = Path(run_dir) / "checkpoint" / "checkpoint.json"
    if not path.is_file():
        return None, None, None, {}
    meta = json.loads(path.read_text())
    training = meta.get("training") or {}
    keep = ((meta.get("config") or {}).get("train") or {}).get("keep")
    return keep, training.get("best_epoch"), training.get("epochs_completed"), training


def _training_curves(add: Any, out: Path, recipe: Any) -> None:
    """Validation BACC after every epoch of every trained model: the evidence for the epoch budget."""
    specs = [*recipe.members, *([recipe.baseline] if recipe.baseline else [])]
    rows = [(m.name, validation_curve(out / "members" / m.name)) for m in specs]
    if not any(c for _, c in rows):
        return
    add("## Validation BACC after each epoch\n")
    add("| model | epochs | validation BACC by epoch (no TTA) | best epoch | epoch kept |")
    add("|---|---|---|---|---|")
    modes: set[str] = set()
    for name, curve in rows:
        if curve:
            best = max(curve, key=lambda e: e[1])
            keep, kept, done, training = _kept_epoch(out / "members" / name)
            if keep:
                modes.add(str(keep))
            epochs = f"{len(curve)}" if done in (None, len(curve)) else f"{done} ({len(curve)} logged)"
            if training.get("stopped_at_time_cap"):
                epochs += f" of {training.get('epochs_planned')}, stopped by the time cap"
            kept_text = "n/a" if kept is None else f"{kept} ({keep})" if keep else str(kept)
            add(f"| {name} | {epochs} | {', '.join(_f(b) for _, b in curve)} | {best[0]} ({_f(best[1])}) | {kept_text} |")
    kept_how = {
        "last": "The checkpoint kept is the last epoch's (a fixed number of epochs): nothing is selected on the "
        "validation split, so its predictions there stay honest held-out predictions.",
        "best": "The checkpoint kept is the epoch of best validation BACC (selected on the validation split).",
    }
    add("\n" + " ".join(kept_how.get(m, f"Checkpoint kept by rule {m!r}.") for m in sorted(modes))
        + " A best epoch at the end of the run means more epochs (more CPU time) would probably still help; "
        "one well before the end means the budget is not the limit.\n")


def _ablation(add: Any, out: Path) -> None:
    """``bench/ablation.py``'s trainings (``<out>/ablation/ablation.json``): one recipe member against
    variants of it (resolution, augmentation...), each trained once with the same seed and time cap."""
    path = out / "ablation" / "ablation.json"
    if not path.is_file():
        return
    a = json.loads(path.read_text())
    add(f"## Ablations (`bench/ablation.py`): member {a.get('member')} against variants of it\n")
    add("One training each, same preset, seed, split and time cap; validation BACC of the checkpoint kept "
        "(best epoch, identity view, no TTA); the change against the reference with its paired 95% lesion-bootstrap "
        "interval over the validation lesions (it does not cover the run-to-run spread of training itself).\n")
    add("| model | what | input | augmentation | validation BACC | change [95% interval] | epochs done / planned | best epoch | minutes | train img/s |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    ref = (a.get("models", {}).get("reference") or {}).get("val_bacc")
    for name, r in a.get("models", {}).items():
        if r is None:
            add(f"| {name} | not finished | | | | | | | | |")
            continue
        size = hw_text(r.get("input_size")) or "?"
        add(f"| {name} | {r.get('what')} | {size} | {r.get('augment')} | {_f(r.get('val_bacc'))} | "
            f"{_delta(r.get('val_bacc'), ref) + ' ' + _pair(r.get('change_ci95')) if name != 'reference' else ''} | "
            f"{r.get('epochs_completed')} / {r.get('epochs_planned')} | {r.get('best_epoch')} | {r.get('training_minutes')} | "
            f"{r.get('train_images_per_s')} |")
    add("")


def _fold_ablations(add: Any, out: Path) -> None:
    """``bench/fold_ablation.py`` results (``<out>/fold_ablations/*.json``): two models, or one model at two
    input sizes, on the same held-out fold, paired."""
    files = sorted((out / "fold_ablations").glob("*.json"))
    if not files:
        return
    add("## Training and test-time levers on one fold (`bench/fold_ablation.py`): variant minus reference\n")
    add("Both models predict the same held-out fold (out-of-fold for both, with the images' metadata); paired "
        "lesion bootstrap. One training per setting: the interval covers the lesions drawn, not training noise.\n")
    add("| comparison | reference | variant | TTA | BACC change [95% CI] | MEL AUC change [95% CI] |")
    add("|---|---|---|---|---|---|")
    for f in files:
        r = json.loads(f.read_text())
        models = r.get("models", {})

        def who(name: str) -> str:
            m = models.get(name, {})
            size = hw_text(m.get("input_size"))
            names = "+".join(Path(str(c)).parent.name for c in m.get("checkpoints") or [m.get("checkpoint", "?")])
            return f"{names}{' at ' + size if size else ''}"

        for tta, ch in r.get("change", {}).items():
            b, m = ch["bacc"], ch["mel_auc"]
            add(f"| {f.stem} (fold {r.get('fold')}, {r.get('n_images')} images) | {who('reference')} | {who('variant')} | {tta} "
                f"| {_f(b['estimate'])} {_pair([b['low'], b['high']])} | {_f(m['estimate'])} {_pair([m['low'], m['high']])} |")
    add("")


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else "?"


def _built_on(add: Any, res: dict[str, Any], out: Path) -> None:
    """A warning when a side result was measured on another build of the bundle than this card's
    (``bundle_id``: sha256 of bundle.json), e.g. before the bundle was rebuilt at another input size."""
    from skinlesion._hashing import sha256_file

    was, meta = res.get("bundle_id"), out / "bundle" / "bundle.json"
    if not was or not meta.is_file():
        return
    now = sha256_file(meta)
    if was == now:
        return
    history = json.loads(meta.read_text()).get("history") or []
    start = next((i for i, h in enumerate(history) if h.get("previous_bundle_id") == was), None)
    if start is not None and all(h.get("action") == "review" for h in history[start:]):
        add(f"Measured on bundle id {str(was)[:12]}; since then only the review flag was refitted (bundle.json history; "
            f"this card's id is {now[:12]}), which these numbers do not read.\n")
        return
    add(f"**Measured on an earlier build of this bundle** (bundle id {str(was)[:12]}, this card's is {now[:12]}): "
        "these numbers describe that build, not this one.\n")


def _levers(add: Any, out: Path) -> None:
    """``bench/levers.py``'s paired comparisons (``out/levers.json``), when the recipe's folder has them."""
    path = out / "levers.json"
    if not path.is_file():
        return
    res = json.loads(path.read_text())
    add(f"## Levers (`python bench/levers.py BUNDLE --test`): variant minus reference, paired lesion bootstrap ({res.get('n_boot')} resamples)\n")
    _built_on(add, res, out)
    add("| lever | BACC reference -> variant | change [95% CI] | MEL AUC reference -> variant | change [95% CI] |")
    add("|---|---|---|---|---|")
    for name, r in res.get("levers", {}).items():
        b, m = r["bacc"], r["mel_auc"]
        add(f"| {name} | {_f(b['reference'])} -> {_f(b['variant'])} | {_f(b['difference'])} {_pair(b['ci'])} "
            f"| {_f(m['reference'])} -> {_f(m['variant'])} | {_f(m['difference'])} {_pair(m['ci'])} |")
    add("")


def _review_scores(add: Any, out: Path) -> None:
    """``bench/risk_coverage.py --compare`` (``out/risk_coverage.json``): review scores side by side."""
    path = out / "risk_coverage.json"
    if not path.is_file():
        return
    res = json.loads(path.read_text())
    add("## Which score should send a case to review (`python bench/risk_coverage.py BUNDLE --compare`)\n")
    _built_on(add, res, out)
    for part, label in (("validation", "validation rows (out-of-fold: one member per row)"), ("test", "test split (all members)")):
        r = res.get(part)
        if not r:
            continue
        rate = r["review_rate"]
        errors = f"errors of {res['errors_of']}" if res.get("errors_of") else "argmax errors"
        add(f"{label}: {r['n']} images, {r['n_lesions']} lesions, {r['n_errors']} {errors}; lower AURC is better; errors caught when "
            f"the {rate:.0%} least confident cases are reviewed (95% lesion-bootstrap intervals).\n")
        add("| score | AURC | E-AURC | AURC minus max prob | errors caught |")
        add("|---|---|---|---|---|")
        key = f"aurc_minus_{r['reference']}"
        for name, s in r["scores"].items():
            diff = f"{_f(s[key])} {_pair(s[key + '_ci'])}" if key in s else "-"
            add(f"| {name}{' (best)' if name == r['best'] else ''} | {_f(s['aurc'])} {_pair(s['aurc_ci'])} | {_f(s['e_aurc'])} | {diff} "
                f"| {_f(s[f'errors_caught_at_{rate:g}'])} {_pair(s['errors_caught_ci'])} |")
        add("")
    if (out / "bundle" / "risk_coverage.png").is_file():  # beside the card (`recipe package` copies both)
        add("![risk-coverage curves on test](risk_coverage.png)\n")


_FAITH_ROWS = (
    ("deletion", "deletion AUC (lower is better)"),
    ("insertion", "insertion AUC (higher is better)"),
    ("mass_in_bbox", "map mass inside the HAM10000 lesion box vs the box's area fraction"),
    ("mass_in_segmentation", "map mass inside the lesion segmentation vs its area fraction"),
)


def _faith_cell(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    return f"{_f(r['mean'])} vs {_f(r['reference'])}: {_f(r['difference'])} {_pair([r['ci_low'], r['ci_high']])}"


def _faithfulness(add: Any, out: Path) -> None:
    """``bench/faithfulness.py --compare`` results: ``out/faithfulness_selection.json`` (configurations
    compared, on validation) and ``out/faithfulness.json`` (the shipped configuration on test)."""
    sel, test = out / "faithfulness_selection.json", out / "faithfulness.json"
    if not (sel.is_file() or test.is_file()):
        return
    from skinlesion.explain.faithfulness import beats_random

    shown = _shown_config(out)
    add("## Attention maps: do they show what the model used? (`python bench/faithfulness.py BUNDLE --compare ...`)\n")
    add("Deletion / insertion: the predicted class's probability as the most-attended pixels are blurred away / "
        "restored, against smooth random maps on the same images; mass: the share of the map inside the lesion, "
        "against the lesion's share of the image. Differences with paired lesion-bootstrap 95% intervals; a "
        "configuration *passes* when deletion and insertion beat random (interval excluding 0) and both masses "
        "exceed the area fraction.\n")
    if sel.is_file():
        r = json.loads(sel.read_text())
        _built_on(add, r, out)
        add(f"Configurations compared on the {r.get('split')} split ({r.get('n')} images of {r.get('n_lesions')} lesions; "
            f"{r['settings'].get('steps')} steps, {r['settings'].get('n_random')} random maps per image):\n")
        add("| configuration | deletion: map vs random | insertion: map vs random | mass in box vs area | passes |")
        add("|---|---|---|---|---|")
        for name, c in r["summary"].items():
            tags = ", ".join(t for t, on in (("largest gain", name == r.get("chosen")), ("shown in reports", name == shown)) if on)
            add(f"| {name}{f' ({tags})' if tags else ''} | {_faith_cell(c.get('deletion'))} | "
                f"{_faith_cell(c.get('insertion'))} | {_faith_cell(c.get('mass_in_bbox'))} | {'yes' if c.get('passes') else 'no'} |")
        add("")
    if test.is_file():
        r = json.loads(test.read_text())
        _built_on(add, r, out)
        for name, c in r["summary"].items():
            add(f"Configuration **{name}**{' (shown in reports)' if name == shown else ''} on the {r.get('split')} split ({r.get('n')} images of {r.get('n_lesions')} "
                f"lesions, accuracy {_f(r.get('accuracy'))}; {r['settings'].get('steps')} steps, "
                f"{r['settings'].get('n_random')} random maps per image):\n")
            add("| measure | map vs reference: difference [95% CI] |")
            add("|---|---|")
            for key, label in _FAITH_ROWS:
                add(f"| {label} | {_faith_cell(c.get(key))} |")
            strata = c.get("by_prediction") or {}
            if strata:
                add("\nBy predicted class (deletion and insertion of the map vs random maps):\n")
                for stratum, sr in strata.items():
                    add(f"- {stratum} ({sr['n']} images): deletion {_f(sr['deletion']['difference'])} "
                        f"{_pair([sr['deletion']['ci_low'], sr['deletion']['ci_high']])}, insertion "
                        f"{_f(sr['insertion']['difference'])} {_pair([sr['insertion']['ci_low'], sr['insertion']['ci_high']])}")
            verdict = "beats random maps on every measure" if c.get("passes") else (
                "does NOT beat random maps on every measure: " + ", ".join(
                    k for k, _ in _FAITH_ROWS if c.get(k) and not beats_random(k, c[k])))
            add(f"\n{name} {verdict}. Reports state this measurement next to the map.\n")


def _shown_config(out: Path) -> str | None:
    """The attention-map configuration reports show for this bundle (the members' registry default)."""
    from skinlesion.explain.faithfulness_note import config_name
    from skinlesion.models.registry import get_spec

    try:
        members = json.loads((out / "bundle" / "bundle.json").read_text())["members"]
        specs = [get_spec(m["backbone"]) for m in members]
    except (OSError, KeyError, ValueError):
        return None
    names = {config_name(s.cam_method, s.cam_layers) for s in specs}
    return names.pop() if len(names) == 1 else None


def _concepts(add: Any, out: Path) -> None:
    """``bench/tcav.py`` (``out/tcav.json``): per class, the significant concepts (random-CAV test)."""
    path = out / "tcav.json"
    if not path.is_file():
        return
    r = json.loads(path.read_text())
    st = r["summary"]["settings"]
    add("## Concepts (TCAV, Kim et al. 2018; `python bench/tcav.py --bundle BUNDLE`)\n")
    _built_on(add, st, out)
    add(f"Concept activation vectors of the ABCDE concepts, learned on the {st.get('split')} split "
        f"({st.get('n_per_class')} images per class at most, {st.get('n_runs')} runs against random concepts, "
        f"{st.get('correction')} correction over {r['summary'].get('n_tests')} tests, alpha {st.get('alpha')}). "
        "A concept is significant for a class when its TCAV score differs from random concepts' scores.\n")
    for line in (v["line"] for v in (r.get("per_class") or {}).values()):
        add(f"- {line}")
    for note in r["summary"].get("notes", []):
        add(f"- Note: {note}")
    add("")


def _review_effect(res: dict[str, Any] | None, errors: str = "argmax errors") -> str:
    """A review flag's effect on one split, in words (``fit_review_flag``'s validation/test dicts)."""
    if not res:
        return "not measured by the recipe (`skinlesion explain review BUNDLE --dry-run` measures it)"
    return (f"flags {_f(res.get('flagged_fraction'))} of {res.get('n')} images and catches {_f(res.get('errors_removed'))} of "
            f"the {res.get('n_errors')} {errors}; accuracy {_f(res.get('accuracy_unflagged'))} on unflagged vs "
            f"{_f(res.get('accuracy_flagged'))} on flagged images, BACC {_f(res.get('bacc_unflagged'))} vs {_f(res.get('bacc_flagged'))}")


def _review(add: Any, rv: dict[str, Any] | None, split: str) -> None:
    """The review flag: its threshold(s), fitted on validation, and their effect on validation and test."""
    if not rv:
        return
    how = ("scored on the members x TTA views of the prediction, no MC-dropout pass" if rv.get("method") == "ensemble"
           else f"{rv['n_samples']} MC-dropout passes")
    # fitted on the errors of the decision shown since review.errors_of exists; before, on the argmax's
    errors = "errors of the decision shown" if rv.get("errors_of") else "argmax errors"
    add(f"\nReview flag ({how}, goal {rv['goal']} {rv['target']}, fitted on {rv.get('fitted_on', 'validation')}"
        f"{', for ' + rv['errors_of'] if rv.get('errors_of') else ''}):\n")
    add(f"- with metadata: {rv['score']} {rv.get('flag_when', '>= threshold')}, threshold {_f(rv.get('threshold'), 4)}; "
        f"validation: {_review_effect(rv.get('validation'), errors)}; {split}: {_review_effect(rv.get('test'), errors)}.")
    nm = rv.get("without_metadata")
    if nm:
        add(f"- without metadata (fitted with the metadata hidden and that operating point's temperature): threshold "
            f"{_f(nm.get('threshold'), 4)}; validation: {_review_effect(nm.get('validation'), errors)}; {split}, metadata hidden: "
            f"{_review_effect(nm.get('test'), errors)}.")
    add("")


def _without_metadata(add: Any, bundle: dict[str, Any], metrics: dict[str, Any] | None, split: str) -> None:
    """The "Without patient metadata" section: the operating point fitted on validation with the
    metadata hidden (bundle.json ``decision.without_metadata``) and its results on ``split``
    (metrics.json ``without_metadata``); nothing for a bundle without metadata fusion members."""
    point = bundle["decision"].get("without_metadata")
    nm = (metrics or {}).get("without_metadata")
    if not point and not nm:
        return
    add("## Without patient metadata\n")
    add("What a user who gives no age, sex or site gets (a CSV without those columns, a web upload with those fields "
        "empty; both engines take them when given): the fusion members see their 'missing' input, and the prediction uses "
        + ("a second operating point whose temperature and thresholds were fitted on validation with the metadata hidden."
           if point else "the main operating point (this bundle has no operating point fitted without metadata).") + "\n")
    if point:
        t = point.get("temperature", {})
        temp = _f(t.get("ensemble")) if t.get("mode") == "ensemble" else (
            ", ".join(f"{k} {_f(v)}" for k, v in t.get("members", {}).items()) or "none")
        pv = point.get("validation") or {}
        add(f"Temperature: {t.get('mode')} ({temp}). Validation decision-rule BACC with the metadata hidden: "
            f"{_f(pv.get('bacc'))} (the with-metadata point on the same images: "
            f"{_f((point.get('validation_with_metadata_point') or {}).get('bacc'))}).\n")
        add("| class | threshold | target sens / spec | on validation (metadata hidden) | how chosen |")
        add("|---|---|---|---|---|")
        for c, th in point.get("thresholds", {}).items():
            add(f"| {c} | {_f(th.get('threshold'), 4)} | {th.get('target_sensitivity')} / {th.get('target_specificity')} | "
                f"{th.get('status')} (sens {_f(th.get('sensitivity'))}, spec {_f(th.get('specificity'))}) | {th.get('rule')} |")
        add("")
    if nm:
        d, main = nm["decision"], (metrics or {}).get("decision", {})
        add(f"On the lesion-disjoint {split} split with the metadata hidden ({nm.get('operating_point')} operating point; "
            "95% lesion-bootstrap intervals):\n")
        add("| | metadata given | metadata hidden |")
        add("|---|---|---|")
        if nm.get("diagnosis"):
            mg = (metrics or {}).get("diagnosis", {})
            add(f"| BACC (diagnosis) | {_ci(mg.get('intervals', {}).get('bacc'))} | {_ci(nm['diagnosis']['intervals'].get('bacc'))} |")
        add(f"| BACC (priority-threshold rule) | {_ci(main.get('intervals', {}).get('bacc'))} | {_ci(d['intervals'].get('bacc'))} |")
        add(f"| malignant BACC | {_ci(main.get('intervals', {}).get('malignant_bacc'))} | {_ci(d['intervals'].get('malignant_bacc'))} |")
        for t in nm.get("targets", []):
            c = t["class"]
            add(f"| {c} sensitivity / specificity | {_ci(main.get('intervals', {}).get(f'sensitivity_{c}'))} / "
                f"{_ci(main.get('intervals', {}).get(f'specificity_{c}'))} | {_ci(d['intervals'].get(f'sensitivity_{c}'))} / "
                f"{_ci(d['intervals'].get(f'specificity_{c}'))} |")
        add("\nWith the metadata hidden, class flags, referral and gate:\n")
        _flag_results(add, nm)
        add("Clinical targets with the metadata hidden (priority-threshold rule):\n")
        for t in nm.get("targets", []):
            add(f"- {t['class']} (threshold {_f(t.get('threshold'), 4)}): sensitivity {_f(t.get('sensitivity'))} "
                f"{_pair(t.get('sensitivity_ci'))} (target {t.get('target_sensitivity')}) "
                f"{'met' if t.get('sensitivity_met') else 'NOT met'}; specificity {_f(t.get('specificity'))} "
                f"{_pair(t.get('specificity_ci'))} (target {t.get('target_specificity')}) "
                f"{'met' if t.get('specificity_met') else 'NOT met'}.")
        add("")


def _decision_parts(add: Any, dec: dict[str, Any]) -> None:
    """What the bundle reports beside the class thresholds: the policy, the diagnosis rule, the
    referral and the out-of-distribution gate (bundle.json ``decision``)."""
    dx = dec.get("diagnosis")
    if not dx:
        return
    add(f"**Policy**: the decision is the **{dec.get('policy', 'diagnosis')}** rule's. The class thresholds above give "
        "the class flags (\"melanoma cannot be excluded\" when p >= threshold), shown beside the diagnosis whatever it is.\n")
    weights = ", ".join(f"{c} {w:+.2f}" for c, w in (dx.get("log_weights") or {}).items())
    add(f"**Diagnosis**: argmax of log p + per-class log-weights fitted for balanced accuracy on held-out predictions "
        f"({dx.get('fitted_on')}): {weights}. {dx.get('selection', {}).get('why', '')}.\n")
    ref = dec.get("referral")
    if ref:
        add(f"**Referral**: refer when the probability of {', '.join(ref.get('malignant_classes') or [])} together reaches "
            f"{_f(ref.get('threshold'), 4)}, the most specific threshold whose lower confidence bound of malignant sensitivity "
            f"reaches {ref.get('target_sensitivity')}: held-out sensitivity {_f(ref.get('sensitivity'))} (bound "
            f"{_f(ref.get('sensitivity_lower'))}), specificity {_f(ref.get('specificity'))}; {ref.get('status')}.\n")
    ood = dec.get("ood")
    if ood:
        prov = ood.get("provenance") or {}
        add(f"**Out-of-distribution gate**: {ood.get('score')} score of members {', '.join(ood.get('members') or [])} "
            f"({prov.get('fitted_on', '')}; {prov.get('train_images')} training images), threshold {_f(ood.get('threshold'), 4)} = the "
            f"{ood.get('quantile')} quantile of held-out images ({_f(100 * float(ood.get('heldout_gated_fraction') or 0), 1)}% of them gated). "
            "A gated image keeps its probabilities and diagnosis, with the warning beside them everywhere.\n")


def _flag_results(add: Any, metrics: dict[str, Any]) -> None:
    """The class flags, the referral and the OOD gate on the evaluated split (metrics.json)."""
    for f in metrics.get("flags") or []:
        add(f"- {f['class']} flag (p >= {_f(f.get('threshold'), 4)}): sensitivity {_f(f.get('sensitivity'))} "
            f"{_pair(f.get('sensitivity_ci'))} (target {f.get('target_sensitivity')}: {'met' if f.get('sensitivity_met') else 'NOT met'}), "
            f"specificity {_f(f.get('specificity'))} {_pair(f.get('specificity_ci'))} (target {f.get('target_specificity')}: "
            f"{'met' if f.get('specificity_met') else 'NOT met'}).")
    ref = metrics.get("referral")
    if ref:
        add(f"- Referral (malignant p >= {_f(ref.get('threshold'), 4)}; {_f(100 * ref['referred_fraction'], 1)}% of images referred): "
            f"malignant sensitivity {_f(ref.get('sensitivity'))} {_pair(ref.get('sensitivity_ci'))} (target {ref.get('target_sensitivity')}: "
            f"{'met' if ref.get('sensitivity_met') else 'NOT met'}), specificity {_f(ref.get('specificity'))} {_pair(ref.get('specificity_ci'))}.")
    ood = metrics.get("ood")
    if ood:
        add(f"- Out-of-distribution gate: {ood['gated']} of {ood['n_images']} images of this split gated "
            f"({_f(100 * ood['gated_fraction'], 1)}%; goal at most {_f(100 * (1 - ood['quantile']), 0)}%).")
    add("")


def _member_metadata(out: Path, member: dict[str, Any]) -> str:
    ckpt = out / "bundle" / member["dir"] / "checkpoint.json"
    try:
        meta = json.loads(ckpt.read_text())
    except (OSError, json.JSONDecodeError):
        return "?"
    md = (meta.get("model") or {}).get("metadata")
    return ", ".join(md.get("features", [])) if isinstance(md, dict) else ""
