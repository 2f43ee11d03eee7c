"""One self-contained HTML report of a follow-up comparison (``skinlesion compare``; see ``delivery/report.py``
for the single-image report it mirrors: inline CSS, images as base64 PNG, no JavaScript, everything escaped).

:func:`aligned_panels` draws both images on the first one's grid with both outlines (also for
``aligned.png`` and ``POST /compare``). Sections: header with the notice; ``#summary`` (verdict, the rule, what fired, caveats);
``#images`` (both images on the first one's grid with both outlines, how well the registration
fits); ``#changes`` (diameter, area, asymmetry, border, colours before and after, new colours
named); ``#model`` (probabilities before, after and their change, decision, review flag and every
other changed flag); ``#provenance`` (inputs, spacings, bundle, version).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from skinlesion.delivery.report import _CSS, _e, _figure, _num, _small, _table
from skinlesion.records import Comparison

BEFORE_OUTLINE = (0, 255, 255)  # cyan, as the single-image outline
AFTER_OUTLINE = (255, 0, 255)  # magenta
OUTSIDE = (128, 128, 128)  # where the registered after image has no pixels
_EXTRA_CSS = """
.verdict{font-size:1.35em;padding:.6em 1em;border-radius:4px;border:3px solid #999}
.verdict.changed{border-color:#b91c1c;background:#fef2f2;color:#7f1d1d}.verdict.unchanged{border-color:#15803d;background:#f0fdf4}
.fired{font-weight:bold;color:#b91c1c}
"""


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def aligned_panels(before: np.ndarray, arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The before image with its outline (cyan), and the after image registered onto the before
    image's grid with its outline (magenta) and the before outline for reference (grey outside the
    after image)."""
    width = max(1, round(max(before.shape[:2]) / 300))
    mask_b = np.asarray(arrays["before_mask"], bool)
    left = before.copy()
    left[_edge(mask_b, width)] = BEFORE_OUTLINE
    right = np.where(np.asarray(arrays["aligned_valid"], bool)[..., None], arrays["after_aligned"], np.array(OUTSIDE, np.uint8))
    right = right.astype(np.uint8)
    right[_edge(mask_b, 1)] = BEFORE_OUTLINE
    right[_edge(np.asarray(arrays["after_mask_aligned"], bool), width)] = AFTER_OUTLINE
    return left, right


def side_by_side(before: np.ndarray, arrays: Mapping[str, np.ndarray], gap: int = 6) -> np.ndarray:
    """Both panels of :func:`aligned_panels` in one image, a white gap between them."""
    left, right = aligned_panels(before, arrays)
    spacer = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def _label(name: Any) -> str:
    return _e(str(name).replace("_", " "))


def _colours(a: Mapping[str, Any] | None) -> str:
    if not a:
        return "n/a"
    fr = a.get("colour_fractions") or {}
    return ", ".join(f"{_label(c)} ({_num(fr.get(c), 2)})" for c in a.get("colours") or []) or "none"


def _summary(c: Mapping[str, Any]) -> str:
    s = c["summary"]
    cls = {"significant change": "changed", "no significant change": "unchanged"}.get(s["verdict"], "")
    rows = [
        [f'<span class="{"fired" if k["fired"] else ""}">{_label(k["name"])}</span>', _e(k["description"]),
         "not assessed" if not k["assessed"] else ("<strong>yes</strong>" if k["fired"] else "no"), _e(k["detail"])]
        for k in s["criteria"]
    ]  # fmt: skip
    html = f'<p class="verdict {cls}"><strong>{_e(s["verdict"][0].upper() + s["verdict"][1:])}</strong></p><p>{_e(s["text"])}</p>'
    if rows:
        html += _table(["Criterion", "What it measures", "Reached", "Value"], rows)
    html += f"<p>Rule: {_e(s['rule'])}.</p><p class=\"muted\">Thresholds chosen by: {_e(s['rule_chosen'])}.</p>"
    html += "".join(f'<p class="muted">Caveat: {_e(x)}.</p>' for x in s.get("caveats") or [])
    return html


def _images(c: Mapping[str, Any], before: np.ndarray, arrays: Mapping[str, np.ndarray]) -> str:
    left, right = aligned_panels(before, arrays)
    left, _ = _small(left, None)
    right, _ = _small(right, None)
    reg = c["registration"]
    figs = (_figure(left, "Before, with its segmentation (cyan)")
            + _figure(right, "After, registered onto the before image: its segmentation (magenta), the before outline (cyan)"))  # fmt: skip
    scale = (f"scale {_num(reg['scale'], 3)} before-pixels per after-pixel ({_e(reg['scale_source'])})")
    text = (
        f"Registration ({_e(reg['method'])}): rotation {_num(reg['rotation_deg'], 1)} degrees, {scale}; fit "
        f"<strong>{_e(reg['fit'])}</strong>: normalised cross-correlation {_num(reg['ncc'], 3)} after registration"
        + (f" ({_num(reg['ncc_unregistered'], 3)} as given)" if reg.get("ncc_unregistered") is not None else "")
        + f", overlap {_num(reg['overlap'], 2)}, segmentations overlap (Dice) {_num(reg.get('mask_dice'), 2)}; {_e(reg['fit_rule'])}."
    )
    segs = "; ".join(f"{role}: {_e(c[role]['segmentation']['quality'])}" for role in ("before", "after"))
    return f'<div class="figs">{figs}</div><p>{text}</p><p class="muted">Segmentation quality: {segs}.</p>'


def _size(ev: Mapping[str, Any], key: str, unit: str) -> list[str]:
    d = ev.get(key)
    if not d:
        return [_e(ev.get("size_note") or "not compared"), "", ""]
    rel = d.get("relative_change")
    return [f"{_num(d['before'], 2)} {unit}", f"{_num(d['after'], 2)} {unit}",
            f"{_num(d['change'], 2)} {unit}" + ("" if rel is None else f" ({100 * rel:+.0f}%)")]  # fmt: skip


def _changes(c: Mapping[str, Any]) -> str:
    ev = c.get("evolution")
    if not ev:
        return "<p>Not measured: a lesion was not found in both images.</p>"
    b, a = c["before"]["abcde"], c["after"]["abcde"]
    unit = {"mm": "mm", "px": "px"}.get(ev["unit"], "")
    area_unit = f"{unit}&sup2;" if unit else ""
    border = ev.get("border") or {}
    rows = [
        ["D: diameter (maximum Feret)", *_size(ev, "diameter", unit)],
        ["Area", *_size(ev, "area", area_unit)],
        ["A: asymmetric axes (of 2)", _num(ev["asymmetric_axes"]["before"]), _num(ev["asymmetric_axes"]["after"]), f"{ev['asymmetric_axes']['change']:+d}"],
        ["A: shape asymmetry index", _num(ev["asymmetry"]["before"], 3), _num(ev["asymmetry"]["after"], 3), f"{ev['asymmetry']['change']:+.3f}"],
        ["B: abrupt border sectors (of 8)", _num(border["abrupt_sectors"]["before"]), _num(border["abrupt_sectors"]["after"]), f"{border['abrupt_sectors']['change']:+d}"],
        ["B: convexity defect", _num(border["convexity_defect"]["before"], 3), _num(border["convexity_defect"]["after"], 3), f"{border['convexity_defect']['change']:+.3f}"],
        ["C: colours (area fraction)", _colours(b), _colours(a),
         "new: " + (_e(", ".join(x.replace("_", " ") for x in ev["colours_gained"])) or "none")
         + "; lost: " + (_e(", ".join(x.replace("_", " ") for x in ev["colours_lost"])) or "none")],
    ]  # fmt: skip
    html = _table(["Measurement", "Before", "After", "Change"], rows)
    if ev["unit"] == "mm":
        html += f"<p>Sizes in millimetres (pixel spacings {_num(c['before']['pixel_spacing_mm'], 4)} and {_num(c['after']['pixel_spacing_mm'], 4)} mm).</p>"
    elif ev.get("size_note"):
        html += f"<p>{_e(ev['size_note'])}.</p>"
    if ev.get("notice"):
        html += f'<p class="muted">{_e(ev["notice"])}</p>'
    return html


def _model(c: Mapping[str, Any]) -> str:
    m = c.get("model")
    if not m:
        return "<p>No model was run for this comparison.</p>"
    rows = [[_e(k), _num(v["before"], 3), _num(v["after"], 3), f"{v['change']:+.3f}"] for k, v in m["probabilities"].items()]
    d, r = m["decision"], m["review_flag"]
    flag = lambda v: "not available" if v is None else ("REVIEW" if v else "not flagged")  # noqa: E731
    html = (
        f"<p>Decision: {_e(d['before'])} before, {_e(d['after'])} after" + (" (<strong>changed</strong>)" if d["changed"] else "") + ".</p>"
        f"<p>Review flag: {flag(r['before'])} before, {flag(r['after'])} after.</p>"
        + _table(["Class", "Before", "After", "Change"], rows)
    )
    changed = [f for f in m.get("changed_fields") or [] if f["field"] not in ("prediction.decision", "uncertainty.review.flag")]
    if changed:
        html += "<p>Other outputs that changed:</p>" + _table(
            ["Field", "Before", "After"], [[_e(f["field"]), _e(f["before"]), _e(f["after"])] for f in changed]
        )
    return html


def _provenance(c: Mapping[str, Any]) -> str:
    rows = []
    for role in ("before", "after"):
        inp = c[role]["input"]
        spacing = c[role]["pixel_spacing_mm"]
        rows.append([f"{role.capitalize()} image", _e(f"{inp.get('name') or inp.get('path') or role}: {inp.get('width')} x {inp.get('height')} px, "
                                                    f"sha256 {inp.get('sha256', 'n/a')}, pixel spacing {'unknown' if spacing is None else f'{spacing:g} mm'}")])  # fmt: skip
    b = c.get("bundle")
    if b:
        rows += [["Bundle", _e(f"{b.get('name') or ''} {b.get('id')}")], ["Engine", _e(b.get("engine", "torch"))],
                 ["Members", _e(", ".join(b.get("members") or []))]]  # fmt: skip
    rows.append(["skinlesion version", _e(c.get("skinlesion_version"))])
    return _table(["Field", "Value"], rows)


def render_comparison_report(
    comparison: Comparison | Mapping[str, Any], before: np.ndarray, after: np.ndarray, arrays: Mapping[str, np.ndarray], *, title: str | None = None
) -> str:
    """The HTML report of a comparison (see the module docstring); ``after`` is kept for symmetry with
    the single-image report (the page shows it registered, from ``arrays``)."""
    for name, image in (("before", before), ("after", after)):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"The '{name}' parameter must be an RGB uint8 array (H, W, 3). Got {image.dtype} {image.shape} instead.")
    if "summary" not in comparison or "registration" not in comparison:
        raise ValueError("The 'comparison' parameter must hold 'summary' and 'registration' (a compare_visits result).")
    names = [comparison[r]["input"].get("name") or r for r in ("before", "after")]
    title = title or f"Follow-up: {names[0]} and {names[1]}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{_e(title)} &ndash; skinlesion comparison</title><style>{_CSS}{_EXTRA_CSS}</style></head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="notice"><strong>Not a diagnosis.</strong> {_e(comparison.get("notice"))}</p>
</header>
<section id="summary"><h2>Change between the visits</h2>{_summary(comparison)}</section>
<section id="images"><h2>Both images, registered, with their segmentations</h2>{_images(comparison, before, arrays)}</section>
<section id="changes"><h2>ABCDE before and after</h2>{_changes(comparison)}</section>
<section id="model"><h2>The model's probabilities and flags</h2>{_model(comparison)}</section>
<section id="provenance"><h2>Provenance</h2>{_provenance(comparison)}</section>
</body>
</html>
"""
