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


def _ci_text(value: float | None, ci: list[float | None] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "")


def _goal(row: dict[str, Any], key: str) -> str:
    goal = row[f"target_{key}"]
    value = _ci_text(row[key], row[f"{key}_ci"])
    if not goal:
        return value
    verdict = {True: "met", False: "NOT met", None: ""}[row[f"{key}_met"]]
    if row[f"{key}_met_by_lower_bound"] is False and row[f"{key}_met"]:
        verdict += " (interval reaches below)"
    return f">= {goal}: {value} {verdict}".strip()


def triage_tables(result: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The class flags and the referral of one operating point's outcomes, as report tables."""
    tables = []
    flags = result.get("flags") or []
    if flags:
        tables.append((
            "Class flags on this split (p >= threshold, whatever the diagnosis)",
            ["Class", "Threshold", "On held-out data", "Sensitivity", "Specificity"],
            [[f["class"], f"{f['threshold']:.4f}", f["validation_status"] or "", _goal(f, "sensitivity"), _goal(f, "specificity")]
             for f in flags],
        ))
    ref = result.get("referral")
    if ref:
        tables.append((
            "Referral on this split (malignant probability >= threshold; malignant: " + ", ".join(ref["malignant_classes"]) + ")",
            ["Threshold", "Referred", "Malignant sensitivity", "Specificity (benign not referred)"],
            [[f"{ref['threshold']:.4f}", f"{100 * ref['referred_fraction']:.1f}%", _goal(ref, "sensitivity"), _goal(ref, "specificity")]],
        ))
    return tables


def bundle_report(result: dict[str, Any], bundle: Bundle, split: str) -> dict[str, Any]:
    """The report of a bundle: argmax vs diagnosis vs the priority-threshold rule, the class flags,
    the referral, the clinical targets, temperature scaling, the out-of-distribution gate, and the
    same with the metadata hidden (bundles with metadata fusion members)."""
    arg, dec, cal, dia = result["argmax"], result["decision"], result["calibration"], result["diagnosis"]
    am, ai, dm, di = arg["metrics"], arg["intervals"], dec["metrics"], dec["intervals"]
    gm, gi = dia["metrics"], dia["intervals"]
    side = [[h, _fmt(h, am, ai), _fmt(h, gm, gi), _fmt(h, dm, di)] for h in HEADLINE]
    for c in bundle.classes:
        for key in ("sensitivity", "specificity"):
            side.append([f"{c} {key}", _rate(key, c, am, ai), _rate(key, c, gm, gi), _rate(key, c, dm, di)])
    target_rows = [
        [t["class"], f"{t['threshold']:.4f}" if t["threshold"] is not None else "none", t["validation_status"],
         f">= {t['target_sensitivity']}: {t['sensitivity']:.3f} " + ("met" if t["sensitivity_met"] else "NOT met"),
         f">= {t['target_specificity']}: {t['specificity']:.3f} " + ("met" if t["specificity_met"] else "NOT met"),
         f"{t['one_vs_rest_sensitivity']:.3f} / {t['one_vs_rest_specificity']:.3f}"
         if t.get("one_vs_rest_sensitivity") is not None else "n/a"]
        for t in result["targets"]
    ]
    gain = dia["gain_over_argmax"]
    notes = [
        f"The decision is the {result['policy']} rule's. Diagnosis ({dia['rule']} rule, fitted for balanced accuracy on "
        f"held-out predictions): BACC {_fmt('bacc', gm, gi)}, argmax {_fmt('bacc', am, ai)}, difference "
        f"{gain['estimate']:+.3f}" + (f" [{gain['low']:+.3f}, {gain['high']:+.3f}]" if gain.get("low") is not None else "")
        + f"; the priority-threshold rule {_fmt('bacc', dm, di)}.",
        "Probabilities: weighted ensemble with test-time augmentation and temperature scaling; "
        f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, "
        f"NLL {cal['nll_before']:.3f} -> {cal['nll_after']:.3f} after temperature scaling.",
    ]
    ood = result.get("ood")
    if ood:
        notes.append(
            f"Out-of-distribution gate ({ood['score']}): {100 * ood['gated_fraction']:.1f}% of the images of this split gated "
            f"({ood['gated']} of {ood['n_images']}; fitted to gate at most {100 * (1 - ood['quantile']):.0f}% of held-out images)."
        )
    if not result["provenance"]["grouped_by_lesion"]:
        notes.append(BY_IMAGE)
    if result["provenance"]["in_sample"]:
        notes.append("IN-SAMPLE: temperatures, weights and thresholds were fitted on this validation split.")
    tables: list[tuple[str, list[str], list[list[str]]]] = [
        (f"Argmax vs diagnosis vs priority-threshold rule ({bundle.spec.decision.conflict} conflicts)",
         ["Metric", "Argmax", "Diagnosis", "Priority-threshold rule"], side),
        *triage_tables(result),
        ("Priority-threshold rule: clinical targets on this split",
         ["Class", "Threshold", "On validation", "Sensitivity (priority rule)", "Specificity (priority rule)",
          "One-vs-rest p >= t: sens. / spec."], target_rows),
    ]
    hidden = result.get("without_metadata")
    if hidden is not None:
        hm, hi = hidden["diagnosis"]["metrics"], hidden["diagnosis"]["intervals"]
        notes.append(
            f"Without patient metadata ({hidden['operating_point_description']}): diagnosis BACC "
            f"{_fmt('bacc', hm, hi)} vs {_fmt('bacc', gm, gi)} with metadata."
        )
        rows = [[h, _fmt(h, gm, gi), _fmt(h, hm, hi)] for h in HEADLINE]
        for t in hidden["targets"]:
            for key in ("sensitivity", "specificity"):
                rows.append([f"{t['class']} {key} (diagnosis)", _rate(key, t["class"], gm, gi), _rate(key, t["class"], hm, hi)])
        tables.append((
            f"Diagnosis with and without patient metadata (without: {hidden['operating_point']} operating point)",
            ["Metric", "With metadata", "Metadata hidden"], rows,
        ))
        tables += [(f"Metadata hidden: {title[0].lower()}{title[1:]}", head, body) for title, head, body in triage_tables(hidden)]
    return {
        "title": f"skinlesion evaluation: bundle {bundle.spec.name} on {split}",
        "metrics": {**am, "ece": cal["ece_after"], "nll": cal["nll_after"]},
        "notes": notes,
        "extra_tables": tables,
    }
