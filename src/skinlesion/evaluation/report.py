"""What ``report.html`` of an evaluation shows besides the headline metrics: title, notes and tables.

Both functions take the metrics.json dict of :mod:`skinlesion.evaluation.pipeline` and return the
keyword arguments ``title``, ``metrics``, ``notes`` and ``extra_tables`` of
:func:`~skinlesion.report.html.write_evaluation_report`.
"""

from __future__ import annotations

from typing import Any

from skinlesion.ensemble.bundle import Bundle

HEADLINE = ("bacc", "malignant_bacc", "accuracy", "f1_macro")
BY_IMAGE = "No lesion ids: split and bootstrap are by image; scores may be optimistic."


def _fmt(metric: str, m: dict[str, Any], iv: dict[str, Any] | None) -> str:
    """``value [low, high]`` of ``metric`` in metrics ``m`` and intervals ``iv`` ("n/a" when undefined)."""
    v = m.get(metric)
    if v is None:
        return "n/a"
    ci = (iv or {}).get(metric)
    return f"{v:.3f}" + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci and ci.get("low") is not None else "")


def _rate(key: str, c: str, metrics: dict[str, Any], intervals: dict[str, Any] | None) -> str:
    """Class ``c``'s ``key`` (sensitivity/specificity) with its interval."""
    name = f"{key}_{c}"
    return _fmt(name, {name: metrics["per_class"][c][key]}, intervals)


def checkpoint_report(result: dict[str, Any], backbone: str, split: str) -> dict[str, Any]:
    """The report of a checkpoint: headline metrics with its ECE and NLL."""
    cal = result["calibration"]
    return {
        "title": f"skinlesion evaluation: {backbone} on {split}",
        "metrics": {**result["metrics"], "ece": cal["ece"], "nll": cal["nll"]},
        "notes": [] if result["provenance"]["grouped_by_lesion"] else [BY_IMAGE],
    }


def bundle_report(result: dict[str, Any], bundle: Bundle, split: str) -> dict[str, Any]:
    """The report of a bundle: argmax vs decision rule, the clinical targets, temperature scaling, and
    the decision rule with the metadata hidden (bundles with metadata fusion members)."""
    arg, dec, cal = result["argmax"], result["decision"], result["calibration"]
    am, ai, dm, di = arg["metrics"], arg["intervals"], dec["metrics"], dec["intervals"]
    side = [[h, _fmt(h, am, ai), _fmt(h, dm, di)] for h in HEADLINE]
    for c in bundle.classes:
        for key in ("sensitivity", "specificity"):
            side.append([f"{c} {key}", _rate(key, c, am, ai), _rate(key, c, dm, di)])
    target_rows = [
        [t["class"], f"{t['threshold']:.4f}" if t["threshold"] is not None else "none", t["validation_status"],
         f">= {t['target_sensitivity']}: {t['sensitivity']:.3f} " + ("met" if t["sensitivity_met"] else "NOT met"),
         f">= {t['target_specificity']}: {t['specificity']:.3f} " + ("met" if t["specificity_met"] else "NOT met"),
         f"{t['one_vs_rest_sensitivity']:.3f} / {t['one_vs_rest_specificity']:.3f}"
         if t.get("one_vs_rest_sensitivity") is not None else "n/a"]
        for t in result["targets"]
    ]
    notes = [
        "Probabilities: weighted ensemble with test-time augmentation and temperature scaling; "
        f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, "
        f"NLL {cal['nll_before']:.3f} -> {cal['nll_after']:.3f} after temperature scaling."
    ]
    if not result["provenance"]["grouped_by_lesion"]:
        notes.append(BY_IMAGE)
    if result["provenance"]["in_sample"]:
        notes.append("IN-SAMPLE: temperatures, weights and thresholds were fitted on this validation split.")
    tables: list[tuple[str, list[str], list[list[str]]]] = [
        (f"Argmax vs decision rule (thresholds, {bundle.spec.decision.conflict} conflicts)",
         ["Metric", "Argmax", "Decision rule"], side),
        ("Clinical targets on this split", ["Class", "Threshold", "On validation", "Sensitivity (decision rule)",
                                            "Specificity (decision rule)", "One-vs-rest p >= t: sens. / spec."], target_rows),
    ]
    hidden = result.get("without_metadata")
    if hidden is not None:
        hm, hi = hidden["decision"]["metrics"], hidden["decision"]["intervals"]
        notes.append(
            f"Without patient metadata ({hidden['operating_point_description']}): decision-rule BACC "
            f"{_fmt('bacc', hm, hi)} vs {_fmt('bacc', dm, di)} with metadata."
        )
        rows = [[h, _fmt(h, dm, di), _fmt(h, hm, hi)] for h in HEADLINE]
        for t in hidden["targets"]:
            for key in ("sensitivity", "specificity"):
                rows.append([
                    f"{t['class']} {key} (target {t[f'target_{key}']})", _rate(key, t["class"], dm, di),
                    _rate(key, t["class"], hm, hi) + {True: " met", False: " NOT met"}.get(t[f"{key}_met"], ""),
                ])
        tables.append((
            f"Decision rule with and without patient metadata (without: {hidden['operating_point']} operating point)",
            ["Metric", "With metadata", "Metadata hidden"], rows,
        ))
    return {
        "title": f"skinlesion evaluation: bundle {bundle.spec.name} on {split}",
        "metrics": {**am, "ece": cal["ece_after"], "nll": cal["nll_after"]},
        "notes": notes,
        "extra_tables": tables,
    }
