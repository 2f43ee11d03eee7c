"""Temperature alone vs temperature with class biases (BCTS), fitted on validation, measured on test
from an evaluation's outputs (prints one JSON object).

    skinlesion evaluate src/skinlesion/default_bundle --split test --data-root DATA --out EVAL
    python bench/calibration_transfer.py --bundle default --eval-dir EVAL

Both calibrations are members of one family applied to the bundle's calibrated log-probabilities
``log p``: ``softmax(log p / a + b)`` (softmax is invariant to a per-row shift, so refitting on
``log p`` instead of on the uncalibrated ensemble gives the same calibrated probabilities). The
biases are fitted on the bundle's validation predictions (``validation.npz``) by NLL
(:class:`~skinlesion.calibration.temperature.BiasedTemperatureScaler`) and applied to the test
probabilities of ``EVAL/predictions.csv``. Then everything ``calibrate`` fits on the new
probabilities is refitted on validation the same way (class thresholds for the targets, the
diagnosis rule, the referral) and measured on test next to what the bundle does today
(``EVAL/metrics.json``). Also the prior-shift diagnosis ``argmax q_k / pi_k`` (pi: validation class
frequencies). Nothing from test is used to fit anything.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a file (python bench/calibration_transfer.py): see bench/_as_package.py
    import _as_package  # noqa: F401

from bench._cli import BenchError, json_main

TARGETS = ("MEL:sens=0.85,spec=0.85", "AKIEC:sens=0.75,spec=0.70")


def _rates(hit: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    return {"sensitivity": float(hit[pos].mean()), "specificity": float((~hit[~pos]).mean()), "flagged": float(hit.mean())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from skinlesion.calibration.diagnosis import select_diagnosis_rule
    from skinlesion.calibration.referral import fit_referral, malignant_probability
    from skinlesion.calibration.temperature import BiasedTemperatureScaler
    from skinlesion.calibration.thresholds import ThresholdCalibrator, parse_targets
    from skinlesion.classes import malignant_indices
    from skinlesion.ensemble.build import load_validation_cache
    from skinlesion.ensemble.bundle import DEFAULT_BUNDLE, load_bundle, resolve_bundle_path
    from skinlesion.metrics.bootstrap import bootstrap_difference_ci
    from skinlesion.metrics.calibration import expected_calibration_error, negative_log_likelihood
    from skinlesion.metrics.classification import balanced_accuracy

    bundle = load_bundle(resolve_bundle_path(args.bundle or DEFAULT_BUNDLE))
    ev = Path(args.eval_dir)
    for name in ("predictions.csv", "ground_truth.csv", "metrics.json"):
        if not (ev / name).is_file():
            raise BenchError(f"{ev / name} is missing: run `skinlesion evaluate BUNDLE --split test --out {ev}` first")
    metrics = json.loads((ev / "metrics.json").read_text())
    if metrics["provenance"].get("bundle_id") != bundle.bundle_id:
        raise BenchError(f"{ev} evaluated bundle {metrics['provenance'].get('bundle_id')}, not {bundle.bundle_id}")
    classes = list(bundle.classes)
    k = len(classes)
    logits, yv, gv = load_validation_cache(bundle)
    lv = bundle.log_probs(logits)
    pred, truth = pd.read_csv(ev / "predictions.csv"), pd.read_csv(ev / "ground_truth.csv")
    if list(pred["image"]) != list(truth["image"]):
        raise BenchError(f"{ev}: predictions.csv and ground_truth.csv list different images")
    pt, yt = pred[classes].to_numpy(float), truth[classes].to_numpy().argmax(1)
    manifest = pd.read_csv(bundle.path / "split_manifest.csv")  # type: ignore[operator]
    lesion = dict(zip(manifest["image_id"], manifest["lesion_id"], strict=True))
    gt = np.asarray([lesion.get(i, i) for i in pred["image"]])
    lt = np.log(np.clip(pt, 1e-12, None))

    scaler = BiasedTemperatureScaler().fit(lv, yv)
    qv, qt = np.exp(scaler.transform(lv)), np.exp(scaler.transform(lt))
    pv = np.exp(lv)
    out: dict[str, Any] = {
        "bundle": {"bundle_id": bundle.bundle_id, "n_val": len(yv), "n_test": len(yt)},
        "fitted": {"temperature_on_calibrated_log_p": scaler.temperature_, "bias": dict(zip(classes, scaler.bias_.tolist(), strict=True))},
        "calibration": {
            name: {"val_ece": expected_calibration_error(yv, v), "test_ece": expected_calibration_error(yt, t),
                   "test_nll": negative_log_likelihood(yt, t), "test_argmax_bacc": balanced_accuracy(yt, t.argmax(1), k)}
            for name, v, t in (("temperature", pv, pt), ("temperature+bias", qv, qt))
        },
    }
    rule, report = select_diagnosis_rule(qv, yv, gv)
    prior = -np.log(np.bincount(yv, minlength=k) / len(yv))
    dx = {
        "today (temperature, shipped rule)": metrics["diagnosis"]["metrics"]["bacc"],
        "temperature+bias, argmax": balanced_accuracy(yt, qt.argmax(1), k),
        "temperature+bias, fitted rule": balanced_accuracy(yt, rule.predict(qt), k),
        "temperature+bias, prior shift argmax q/pi": balanced_accuracy(yt, (np.log(np.clip(qt, 1e-12, None)) + prior).argmax(1), k),
    }
    out["diagnosis_test_bacc"] = dx
    out["diagnosis_rule_on_bias_probs"] = report["why"]
    out["fitted_rule_minus_argmax_today"] = bootstrap_difference_ci(
        rule.predict(qt), pt.argmax(1), gt, lambda t, d: balanced_accuracy(t, d, k), y_true=yt, n_boot=args.n_boot, seed=0,
    )
    cal = ThresholdCalibrator(parse_targets(list(TARGETS)), confidence=0.95).fit(qv, yv, classes)
    flags: dict[str, Any] = {}
    for c, ch in cal.choices_.items():
        j = classes.index(c)
        today = next((f for f in metrics.get("flags", []) if f["class"] == c), None)
        flags[c] = {
            "temperature+bias": {"threshold": ch.threshold, "validation_status": ch.status, **_rates(qt[:, j] >= ch.threshold, yt == j)},
            "today": None if today is None else {k2: today[k2] for k2 in ("threshold", "sensitivity", "specificity")},
        }
    out["flags_test"] = flags
    ref = fit_referral(qv, yv, classes)
    malignant = np.isin(yt, malignant_indices(classes))
    out["referral_test"] = {
        "temperature+bias": {"threshold": ref["threshold"], **_rates(malignant_probability(qt, classes) >= ref["threshold"], malignant)},
        "today": {k2: metrics["referral"][k2] for k2 in ("threshold", "sensitivity", "specificity", "referred_fraction")}
        if metrics.get("referral") else None,
    }
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=None, help="Bundle folder; 'default' or omitted: the bundle shipped in the package.")
    ap.add_argument("--eval-dir", required=True, help="The output folder of `skinlesion evaluate BUNDLE --split test`.")
    ap.add_argument("--n-boot", type=int, default=1000)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return json_main("calibration_transfer", parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
