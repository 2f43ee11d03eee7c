"""One self-contained HTML report per predicted image (``skinlesion predict --report``).

:func:`render_report` takes an :class:`~skinlesion.records.Explanation` (the result of
:meth:`~skinlesion.delivery.engine.Predictor.explain`, optionally with an ``input`` entry: ``image``,
``path``, ``sha256``, ``shape``), the RGB image and the explain arrays, and returns one HTML document: inline CSS, images as base64 PNG data URIs,
the probability chart as inline SVG, no JavaScript and no external resource. Every string from the
result, the bundle or the file name is escaped.

Sections, in this order (the REST service's web page shows the same content under the same
headings and ids):

1. header: title, the notice (:data:`~skinlesion.records.NOTICE`, ``p.notice``) and, when
   the review flag fired, a ``div.review`` banner;
2. ``#decision``: the diagnosis and its rule; under the ``priority-threshold`` policy also that
   rule's decision and what decided it; then the class flags ("melanoma cannot be excluded") and the
   referral as separate lines; the out-of-distribution warning when the image is gated (also a
   ``div.ood`` banner in the header); argmax, the operating point (with or without metadata) and
   the class thresholds;
3. ``#probabilities``: bar chart of the class probabilities with a marker at each class threshold,
   and the same numbers as a table;
4. ``#images``: the image, the Grad-CAM++ overlay and the segmentation outline (at most
   :data:`MAX_SIDE` pixels a side), with the attention summary;
5. ``#uncertainty``: MC-dropout predictive entropy split into aleatoric (expected entropy) and
   epistemic (mutual information) parts, in nats, and the review flag with its threshold;
6. ``#abcde``: the ABCDE measurements (diameter in mm only when the pixel spacing is known,
   otherwise in px, "spacing unknown") and the Total Dermoscopy Score;
7. ``#provenance``: bundle name, id, engine and members, skinlesion version, the patient metadata used,
   input name and sha256.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from skinlesion.delivery.images import conversion_text
from skinlesion.records import NOTICE, Explanation, PredictionRecord

MAX_SIDE = 512  # embedded images are downscaled to keep reports small
_METHODS = {"gradcam++": "Grad-CAM++", "gradcam": "Grad-CAM", "layercam": "Layer-CAM", "hirescam": "HiRes-CAM",
            "eigencam": "Eigen-CAM"}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;word-break:break-all}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}
.notice{border:2px solid #b45309;background:#fff7ed;padding:.8em 1em;border-radius:4px}
.review{border:3px solid #b91c1c;background:#fef2f2;color:#7f1d1d;padding:.8em 1em;border-radius:4px;font-size:1.15em}
.decision{font-size:1.3em}.ood{background:#fee2e2;border:2px solid #b91c1c;padding:.5em;margin:.5em 0}.flags li.flag-on,.flags li.refer-on{color:#991b1b}.figs{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.muted{color:#666;font-size:.9em}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if v != 0 and round(v, digits) == 0 else f"{v:.{digits}f}"  # tiny values stay readable


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escape text before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- images ------------------------------------------------------------------------------------------------
def _small(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(1.0, MAX_SIDE / max(h, w))
    if scale >= 1.0:
        return image, mask
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return small, mask


def _png_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(array: np.ndarray, caption: str) -> str:
    return f'<figure><img alt="{_e(caption)}" src="{_png_uri(array)}"><figcaption>{_e(caption)}</figcaption></figure>'


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    out = image.copy()
    out[edge] = (0, 255, 255)
    return out


def _images(result: Mapping[str, Any], image: np.ndarray, arrays: Mapping[str, np.ndarray] | None) -> str:
    from skinlesion.explain.cam import overlay_array

    arrays = arrays or {}
    mask = arrays.get("mask")
    small, small_mask = _small(image, None if mask is None else np.asarray(mask, dtype=bool))
    figs = [_figure(small, "Image")]
    att = result.get("attention") or {}
    method = _METHODS.get(att.get("method"), att.get("method") or "Grad-CAM++")
    if att.get("layers"):
        method += f" ({' + '.join(map(str, att['layers']))})"
    if arrays.get("cam") is not None:
        figs.append(_figure(overlay_array(small, arrays["cam"]), f"{method} attention map for class {att.get('class', '?')}"))
    if small_mask is not None and small_mask.any():
        figs.append(_figure(_outline(small, small_mask), "Automatic lesion segmentation (outline)"))
    notes = []
    if att:
        notes.append(
            f"Attention map: {_e(method)} of class {_e(att.get('class'))}; share of attention inside "
            f"the segmented lesion {_num(att.get('mass_in_lesion'), 2)}; lesion covers "
            f"{_num(att.get('lesion_area_fraction'), 2)} of the image."
        )
        faith = att.get("faithfulness") or {}
        if faith.get("line"):
            notes.append(_e(faith["line"]))
    seg = result.get("segmentation") or {}
    if seg:
        notes.append(f"Segmentation quality: {_e(seg.get('quality'))} ({_e(seg.get('method'))}).")
    if not arrays:
        notes.append("No attention map or segmentation was computed for this image.")
    return f'<div class="figs">{"".join(figs)}</div>' + "".join(f'<p class="muted">{n}</p>' for n in notes)


# -- probabilities and the decision rule -------------------------------------------------------------------------
def probability_svg(probabilities: Mapping[str, float], thresholds: Mapping[str, float | None] | None, decision: str | None) -> str:
    """Horizontal bars (0-1) per class with a black tick at each class threshold, as inline SVG."""
    thresholds = thresholds or {}
    label_w, bar_w, row_h, pad = 80, 360, 24, 6
    width, height = label_w + bar_w + 70, row_h * len(probabilities) + 2 * pad + 14
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="Class probabilities"><g font-size="13" font-family="sans-serif">']
    for i, (c, p) in enumerate(probabilities.items()):
        y = pad + i * row_h
        p = min(max(float(p), 0.0), 1.0)
        colour = "#b45309" if c == decision else "#60a5fa"
        parts.append(f'<text x="0" y="{y + 16}">{_e(c)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row_h - 8}" fill="#f1f5f9"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{p * bar_w:.1f}" height="{row_h - 8}" fill="{colour}"/>')
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 16}">{p:.3f}</text>')
        t = thresholds.get(c)
        if t is not None:
            x = label_w + float(t) * bar_w
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + row_h - 2}" stroke="#111" stroke-width="2">'
                         f'<title>threshold of {_e(c)}: {float(t):.4f}</title></line>')
    y = pad + len(probabilities) * row_h + 10
    parts.append(f'<text x="{label_w}" y="{y}" font-size="11" fill="#555">0</text>'
                 f'<text x="{label_w + bar_w - 8}" y="{y}" font-size="11" fill="#555">1</text>'
                 f'<text x="{label_w + 40}" y="{y}" font-size="11" fill="#555">black tick: class threshold; orange: diagnosis</text>')
    parts.append("</g></svg>")
    return "".join(parts)


def _rule(pred: Mapping[str, Any]) -> str:
    thresholds = {c: t for c, t in (pred.get("thresholds") or {}).items() if t is not None}
    if not thresholds:
        return "<p>Class thresholds: none (this model has no clinical thresholds).</p>"
    rows = [[_e(c), _num(t)] for c, t in thresholds.items()]
    if pred.get("policy") != "priority-threshold":
        return "<p>Class thresholds (the flags above):</p>" + _table(["Class", "Threshold (probability)"], rows)
    priority = [c for c in (pred.get("priority") or []) if c in thresholds]
    conflict = pred.get("conflict") or "priority"
    how = (
        "the first class, in priority order, whose probability reaches its threshold"
        if conflict == "priority"
        else "among classes whose probability reaches their threshold, the one with the largest probability / threshold ratio"
    )
    return (
        f"<p>Decision rule (priority-threshold policy, the reference system's): {how} is the decision; when no threshold "
        f"is reached, the most probable class among the classes without a threshold. Priority order: "
        f"{_e(' > '.join(priority) or 'n/a')}; conflict rule: {_e(conflict)}.</p>"
        + _table(["Class", "Threshold (probability)"], rows)
    )


def ood_banner(result: Mapping[str, Any]) -> str:
    """The out-of-distribution warning (``div.ood``) of a gated image, else ""."""
    ood = result.get("ood") or {}
    if not ood.get("gated"):
        return ""
    return (f'<div class="ood"><strong>Out of distribution</strong>: {_e(ood.get("warning"))} '
            f"(score {_num(ood.get('score'))} &gt; threshold {_num(ood.get('threshold'))}).</div>")


def _flags(pred: Mapping[str, Any]) -> str:
    items = []
    for f in pred.get("flags") or []:
        mark = "<strong>FLAG</strong>: " if f.get("flagged") else ""
        items.append(
            f'<li class="{"flag-on" if f.get("flagged") else "flag-off"}">{mark}{_e(f.get("text"))} '
            f"(p = {_num(f.get('probability'), 3)}, threshold {_num(f.get('threshold'))}; target {_e(f.get('target'))})</li>"
        )
    ref = pred.get("referral")
    if ref:
        items.append(
            f'<li class="{"refer-on" if ref.get("refer") else "refer-off"}">{_e(ref.get("text"))} '
            f"(probability of a malignancy ({_e(', '.join(ref.get('malignant_classes') or []))}) "
            f"{_num(ref.get('malignant_probability'), 3)}, threshold {_num(ref.get('threshold'))}; target {_e(ref.get('target'))})</li>"
        )
    return f'<ul class="flags">{"".join(items)}</ul>' if items else "<p>No class flags or referral fitted for this model.</p>"


def _decision(result: Mapping[str, Any]) -> str:
    pred = result["prediction"]
    probs = pred.get("probabilities") or {}
    dx = pred.get("diagnosis", pred.get("decision"))
    policy = pred.get("policy")
    other = (
        f'<p class="decision">Decision (priority-threshold policy): <strong>{_e(pred.get("decision"))}</strong>, decided by '
        f"{_e(pred.get('decided_by'))}.</p>" if policy == "priority-threshold" else ""
    )
    return (
        f'<p class="decision">Diagnosis: <strong>{_e(dx)}</strong> (p = {_num(probs.get(dx), 3)}); '
        f"{_e(pred.get('diagnosis_rule', pred.get('decided_by')))}.</p>"
        + other + _flags(pred) + ood_banner(result)
        + f"<p>Most probable class (argmax): {_e(pred.get('argmax'))}.</p>"
        + (f"<p>Operating point: {_e(pred['operating_point'])}.</p>" if pred.get("operating_point") else "")
        + f"<p>Review flag: <strong>{_flag_text(result.get('uncertainty'))}</strong> (see Uncertainty).</p>" + _rule(pred)
    )


def _flag_text(u: Mapping[str, Any] | None) -> str:
    flag = _review(u).get("flag")
    if not u:
        return "not computed"
    return "not available" if flag is None else ("REVIEW" if flag else "not flagged")


def _probabilities(result: Mapping[str, Any]) -> str:
    pred = result["prediction"]
    probs = pred.get("probabilities") or {}
    thresholds = pred.get("thresholds") or {}
    rows = [[_e(c), _num(p), _num(thresholds.get(c)) if thresholds.get(c) is not None else "&ndash;"] for c, p in probs.items()]
    return probability_svg(probs, thresholds, pred.get("diagnosis", pred.get("decision"))) + _table(["Class", "Probability", "Threshold"], rows)


# -- uncertainty, ABCDE, provenance -------------------------------------------------------------------------------
def _review(u: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((u or {}).get("review") or {})


#: What a review score is, in words, and which side of its threshold flags (probabilities: low values).
_SCORE_WORDS = {
    "decision_prob": ("probability of the decided class", "&le;"), "max_prob": ("highest class probability", "&le;"),
    "predictive_entropy": ("predictive entropy", "&ge;"), "mutual_information": ("mutual information (epistemic)", "&ge;"),
    "expected_entropy": ("expected entropy (aleatoric)", "&ge;"), "predicted_class_variance": ("variance of the predicted class", "&ge;"),
}


def _review_reason(r: Mapping[str, Any], prediction: Mapping[str, Any] | None) -> str:
    """Why a case was flagged: its score against the threshold, and when the decision is not the most
    probable class, that too (the diagnosis rule chose a class the model finds less likely)."""
    words, side = _SCORE_WORDS.get(str(r.get("score")), (_e(r.get("score")), "beyond"))
    text = f"{words} {_num(r.get('value'))} {side} threshold {_num(r.get('threshold'))}"
    p = prediction or {}
    decision, argmax = p.get("decision"), p.get("argmax")
    if decision and argmax and decision != argmax:
        probs = p.get("probabilities") or {}
        text += (f"; the decision {_e(decision)} is not the most probable class ({_e(argmax)}, p = {_num(probs.get(argmax))}): "
                 "the diagnosis rule chose it to balance the classes' sensitivities")
    return text


def _uncertainty(u: Mapping[str, Any] | None) -> str:
    if not u:
        return "<p>Not computed (MC-dropout passes set to 0): no uncertainty and no review flag.</p>"
    rows = [
        ["Predictive entropy (total)", _num(u.get("predictive_entropy"))],
        ["Aleatoric part: expected entropy (data ambiguity)", _num(u.get("aleatoric_expected_entropy"))],
        ["Epistemic part: mutual information (model uncertainty)", _num(u.get("epistemic_mutual_information"))],
        ["Highest mean probability", _num(u.get("max_probability"))],
        ["MC-dropout passes", _num(u.get("n_samples"))],
    ]
    html = _table(["Quantity (nats)", "Value"], rows)
    if u.get("stochastic") is False:
        html += '<p class="muted">The model has no active dropout: the passes are identical and the epistemic part is 0.</p>'
    r = _review(u)
    if r.get("flag") is None:
        html += f"<p>Review flag: not available ({_e(r.get('note', 'no review threshold in this bundle'))}).</p>"
    else:
        html += (
            f"<p>Review flag: <strong>{'REVIEW' if r['flag'] else 'not flagged'}</strong>; {_e(r.get('score'))} "
            f"({_SCORE_WORDS.get(str(r.get('score')), ('', ''))[0] or 'score'}) = "
            f"{_num(r.get('value'))}, threshold {_num(r.get('threshold'))} ({_e(r.get('goal'))}).</p>"
        )
    if u.get("method"):
        html += f'<p class="muted">{_e(u["method"])}.</p>'
    return html


def _abcde(result: Mapping[str, Any]) -> str:
    a = result.get("abcde")
    if not a:
        return "<p>No lesion was found by the automatic segmentation: ABCDE and the Total Dermoscopy Score were not computed.</p>"
    if a.get("spacing_known") and a.get("diameter_mm") is not None:
        diameter = f"{_num(a['diameter_mm'], 1)} mm (pixel spacing {_num(a.get('pixel_spacing_mm'), 4)} mm)"
        larger = _num(a.get("larger_than_6mm"))
    else:
        diameter = f"{_num(a.get('diameter_px'), 0)} px (spacing unknown)"
        larger = "unknown (spacing unknown)"
    fractions = a.get("colour_fractions") or {}
    colours = ", ".join(f"{_e(str(c).replace('_', ' '))} ({_num(fractions.get(c), 2)})" for c in a.get("colours") or []) or "none"
    rows = [
        ["A: asymmetry", f"{_num(a.get('asymmetric_axes'))} of 2 axes asymmetric (shape {_e(_nums(a.get('shape_asymmetry_axes')))}, "
                         f"colour {_e(_nums(a.get('colour_asymmetry_axes')))})"],
        ["B: border", f"{_num(a.get('abrupt_border_sectors'))} of 8 sectors with an abrupt cut-off; compactness "
                      f"{_num(a.get('compactness'), 2)}, convexity defect {_num(a.get('border_irregularity'), 3)}"],
        ["C: colours", colours],
        ["D: diameter (maximum Feret)", diameter],
        ["Larger than 6 mm", larger],
    ]
    html = _table(["Criterion", "Measurement"], rows)
    tds = result.get("dermoscopy_score")
    if tds:
        comp = tds.get("components") or {}
        html += (
            f"<p>Total Dermoscopy Score (Stolz ABCD rule): <strong>{_num(tds.get('score'), 2)}</strong>, band "
            f"{_e(str(tds.get('band', '')).replace('_', ' '))} (A {_num(comp.get('asymmetry'))}, B {_num(comp.get('border'))}, "
            f"C {_num(comp.get('colours'))}, D {_num(comp.get('structures'))} differential structures"
            + (f": {_e(', '.join(tds.get('structures') or []))}" if tds.get("structures") else "") + ").</p>"
        )
        if tds.get("notice"):
            html += f'<p class="muted">{_e(tds["notice"])}</p>'
    if a.get("notice"):
        html += f'<p class="muted">{_e(a["notice"])}</p>'
    return html


def _nums(values: Any) -> str:
    return ", ".join(_num(v, 2) for v in (values or []))


def _provenance(result: Mapping[str, Any]) -> str:
    import skinlesion

    b = result.get("bundle") or {}
    inp = result.get("input") or {}
    rows = [
        ["Bundle name", _e(b.get("name"))],
        ["Bundle id (sha256 of bundle.json)", _e(b.get("id"))],
        ["Engine", _e(b.get("engine", "torch"))],
        ["Members", _e(", ".join(b.get("members") or []))],
        ["skinlesion version", _e(result.get("skinlesion_version") or skinlesion.__version__)],
    ]
    md = result.get("metadata")
    if md is not None:
        if not md.get("members_using_metadata"):
            text = "not used (this bundle's members use the image only)"
        elif md.get("used") is None:
            text = "none given: predicted as if age, sex and site were unknown"
        else:
            text = ", ".join(
                f"{k} {'unknown' if v is None else format(v, 'g') if isinstance(v, float) else v}" for k, v in md["used"].items()
            )
        rows.append(["Patient metadata used", _e(text)])
    for key, label in (("image", "Image id"), ("path", "Input file"), ("sha256", "Input sha256"), ("shape", "Image size (H, W, C)")):
        if inp.get(key) is not None:
            rows.append([label, _e(inp[key])])
    if "converted_from" in result:
        rows.append(["Converted to 8-bit RGB", _e(conversion_text(result["converted_from"]) or "no (the file was upright 8-bit RGB)")])
    return _table(["Field", "Value"], rows)


def render_report(
    result: Explanation | PredictionRecord | Mapping[str, Any], image: np.ndarray, arrays: Mapping[str, np.ndarray] | None, *, title: str | None = None
) -> str:
    """The HTML report of one image (see the module docstring for its sections).

    Args:
        result: :meth:`Predictor.explain`'s result (a :meth:`Predictor.predict` record works too:
            without ``abcde`` and ``attention`` those sections say they were not computed).
        image: the RGB uint8 image ``(H, W, 3)`` that was predicted.
        arrays: ``{"cam": (H, W) in [0, 1], "mask": (H, W) bool}`` from ``explain``, or None.
        title: the page title (escaped); default the input's image id or "Lesion image".
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"The 'image' parameter must be an RGB uint8 array (H, W, 3). Got {image.dtype} {image.shape} instead.")
    if "prediction" not in result:
        raise ValueError("The 'result' parameter must hold 'prediction' (a Predictor.explain result).")
    title = title or (result.get("input") or {}).get("image") or "Lesion image"
    u = result.get("uncertainty")
    banner = ""
    if _review(u).get("flag"):
        r = _review(u)
        banner = (f'<div class="review"><strong>REVIEW</strong>: the model is unusually uncertain about this image '
                  f"({_review_reason(r, result.get('prediction'))}); "
                  "a clinician should look at it with particular care.</div>")
    notice = result.get("notice") or NOTICE
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{_e(title)} &ndash; skinlesion report</title><style>{_CSS}</style></head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="notice"><strong>Not a diagnosis.</strong> {_e(notice)}</p>
{banner}
{ood_banner(result)}
</header>
<section id="decision"><h2>Decision</h2>{_decision(result)}</section>
<section id="probabilities"><h2>Class probabilities</h2>{_probabilities(result)}</section>
<section id="images"><h2>Image, attention map and segmentation</h2>{_images(result, image, arrays)}</section>
<section id="uncertainty"><h2>Uncertainty and review flag</h2>{_uncertainty(u)}</section>
<section id="abcde"><h2>ABCDE measurements and Total Dermoscopy Score</h2>{_abcde(result)}</section>
<section id="provenance"><h2>Provenance</h2>{_provenance(result)}</section>
</body>
</html>
"""
