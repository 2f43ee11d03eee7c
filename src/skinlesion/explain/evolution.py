"""Follow-up visits: compare two dermoscopic images of one lesion (the E of ABCDE) and say whether it changed.

:func:`compare_lesions` segments both images, measures ABCDE on each (in millimetres with its own
pixel spacing, when known), registers the later image onto the earlier one
(:func:`~skinlesion.explain.registration.register_pair`; for display and to say how well the two
views fit, the measurements do not depend on it), compares the measurements
(:func:`~skinlesion.explain.abcde.compare_evolution`) and applies :data:`CHANGE_RULE`.

The colours of the later image are measured after a per-channel gain gives its skin the earlier
image's skin colour (:func:`skin_gain`): the same skin under another light.

The rule (:class:`ChangeRule`) calls a change *significant* when any assessed criterion reaches its
threshold:

* ``growth``: the lesion area changed by a factor of at least ``1 + growth`` either way. Assessed
  only when both pixel spacings are known: without them a size difference cannot be told from a
  different magnification (HAM10000's images of one lesion differ in segmented area by a factor of
  up to 10 from zoom alone; see ``bench/evolution.py``).
* ``new_colour``: a dermoscopic colour absent before covers at least ``new_colour`` of the lesion
  after (:func:`new_colours`: a brown appearing where the other brown was is a shade shift, not counted).
* ``asymmetry``: the mean shape asymmetry (``abcde``) rose by at least ``asymmetry``.

It calls nothing (``not assessed``) when a lesion is not found in one image, or when the two
segmentations, registered, overlap less than ``min_mask_dice`` (Dice): they then outline different
regions (a lesion that doubled in area still overlaps its earlier outline by 0.67).

The thresholds are measured, not guessed (``python bench/evolution.py``, result in
``bench/results/evolution.json``): each is the ``1 - target/3`` quantile of its statistic on the
pairs of images of the same lesion (no change) of a calibration half of HAM10000's lesions, so that
the rule calls at most about ``target`` of unchanged lesions changed; the false-alarm rate is then
reported on the other half, and the detection rate on synthetic follow-up pairs with a known change
(:mod:`skinlesion.data.synthetic`). HAM10000 has no pixel spacings: the growth threshold is fitted
on pairs brought to one magnification by the registration's scale. Border changes are reported but
not part of the rule.

Decision support only: the result carries :data:`~skinlesion.explain.abcde.NOTICE`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from skinlesion.explain._abcde_checks import check_image, check_spacing
from skinlesion.explain.abcde import NOTICE, ABCDEResult, compare_evolution, measure_abcde
from skinlesion.explain.registration import Registration, register_pair, warp_onto
from skinlesion.explain.segmentation import segment_lesion
from skinlesion.metrics.classification import to_jsonable

__all__ = [
    "CHANGE_RULE",
    "REGISTRATION_MIN_NCC",
    "ChangeRule",
    "LesionComparison",
    "assess_change",
    "change_statistics",
    "check_spacings",
    "compare_lesions",
    "new_colours",
    "skin_gain",
]

#: A brown that appears where the other brown was is a shade shift, not a new colour.
SHADE_OF = {"light_brown": "dark_brown", "dark_brown": "light_brown"}
#: The rule's criteria, in the order they are reported.
CRITERIA: tuple[str, ...] = ("growth", "new_colour", "asymmetry")
SIGNIFICANT = "significant change"
NOT_SIGNIFICANT = "no significant change"
NOT_ASSESSED = "not assessed"


@dataclass(frozen=True)
class ChangeRule:
    """Thresholds of the "significant change" rule (see the module docstring)."""

    growth: float  # relative area change, either way (0.2: x1.2 or /1.2)
    new_colour: float  # area fraction of the lesion covered by a colour absent before
    asymmetry: float  # rise of the mean shape asymmetry index
    target_false_alarm: float  # the share of unchanged lesions the thresholds were fitted to call changed
    chosen: str  # how the thresholds were chosen
    min_mask_dice: float = 0.5  # below: the segmentations outline different regions, no change is called

    def fires(self, stats: dict[str, float | None]) -> dict[str, bool | None]:
        """Whether each criterion reaches its threshold (None: not assessed) for the statistics of
        :func:`change_statistics`."""
        return {name: None if stats.get(name) is None else bool(stats[name] >= getattr(self, name)) for name in CRITERIA}

    def assessable(self, mask_dice: float | None) -> bool:
        """Whether the two segmentations, registered, overlap enough to compare what they outline
        (None: not checked)."""
        return mask_dice is None or mask_dice >= self.min_mask_dice

    def describe(self) -> str:
        """The rule in words."""
        return (
            "significant change when any assessed criterion reaches its threshold: the area changed by a factor of "
            f"{1 + self.growth:.2f} or more either way (grew by {100 * self.growth:.0f}% or shrank by "
            f"{100 * (1 - 1 / (1 + self.growth)):.0f}%; assessed only with both pixel spacings), a colour absent "
            f"before (other than a light/dark brown shift) covers {100 * self.new_colour:.0f}% or more of the lesion, or "
            f"the shape asymmetry index rose by {self.asymmetry:.3f} or more; not assessed when the registered "
            f"segmentations overlap less than {self.min_mask_dice:g} (Dice)"
        )


#: The shipped rule: thresholds from ``python bench/evolution.py`` (``bench/results/evolution.json``,
#: ``ham10000.fitted_rule``: calibration half of HAM10000, rounded up to two decimals).
CHANGE_RULE = ChangeRule(
    growth=0.56,
    new_colour=0.22,
    asymmetry=0.14,
    target_false_alarm=0.05,
    chosen=(
        "each threshold is the 98.3% quantile (1 - 0.05/3) of its statistic on unchanged lesions: pairs of images of one "
        "lesion from the same visit in a calibration half of HAM10000 (767 pairs; growth: the 125 of them at one apparent "
        "magnification), so that about 5% of unchanged lesions are called changed; `python bench/evolution.py`, "
        "bench/results/evolution.json"
    ),
    min_mask_dice=0.5,
)
#: Below this normalised cross-correlation the registered images are said to fit poorly: every correct
#: registration (mean error < 2 px) of 90 unchanged synthetic pairs scored at least 0.67, the one
#: failure 0.61 (``bench/evolution.py``); 4.5% of HAM10000 pairs of one lesion score below it.
REGISTRATION_MIN_NCC = 0.65
#: The colour normalisation of the after image changes no channel by more than this factor.
MAX_GAIN = 1.5


@dataclass
class LesionComparison:
    """What :func:`compare_lesions` returns: the JSON-ready ``result`` and the arrays behind it
    (``before_mask``, ``after_mask``, ``after_aligned`` RGB on the before grid, ``after_mask_aligned``,
    ``aligned_valid``: where the aligned after image is defined)."""

    result: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    before: ABCDEResult | None = None
    after: ABCDEResult | None = None
    registration: Registration | None = None


def check_spacings(before: float | None, after: float | None) -> tuple[float | None, float | None]:
    """Both pixel spacings or neither: one alone cannot put both images in millimetres."""
    b = check_spacing(before)
    a = check_spacing(after)
    if (b is None) != (a is None):
        given, missing = ("before", "after") if a is None else ("after", "before")
        raise ValueError(
            f"The pixel spacing of the {given} image is given but not that of the {missing} image: give both "
            "(or one spacing for both images), or neither to compare without millimetres."
        )
    return b, a


def change_statistics(before: ABCDEResult, after: ABCDEResult, *, sizes_comparable: bool) -> dict[str, float | None]:
    """The rule's statistics: ``growth`` (relative area change either way, ``max(r, 1/r) - 1`` of the
    area ratio ``r``; None when sizes are not comparable), ``new_colour`` (largest fraction of the
    after lesion covered by a colour absent before, a shift between light and dark brown not
    counted; 0 when none) and ``asymmetry`` (rise of the mean shape asymmetry, negative when it fell)."""
    growth = None
    if sizes_comparable and before.area > 0 and after.area > 0:
        ratio = after.area / before.area
        growth = max(ratio, 1.0 / ratio) - 1.0
    return {
        "growth": growth,
        "new_colour": max((after.colour_fractions.get(c, 0.0) for c in new_colours(before, after)), default=0.0),
        "asymmetry": after.asymmetry - before.asymmetry,
    }


def new_colours(before: ABCDEResult, after: ABCDEResult) -> list[str]:
    """Colours present after and absent before that the rule counts: not a brown that was the other
    brown before (between two photographs of one unchanged lesion, light and dark brown trade places
    with lighting and exposure; see ``bench/evolution.py``)."""
    return [c for c in after.colours if c not in before.colours and SHADE_OF.get(c) not in before.colours]


def _criteria(stats: dict[str, float | None], evolution: dict, rule: ChangeRule, spacing_note: str | None) -> list[dict[str, Any]]:
    fires = rule.fires(stats)
    area = evolution.get("area") or {}
    ratio = (area["after"] / area["before"]) if area and area.get("before") else None
    gained = evolution.get("colours_gained") or []
    counted = evolution.get("new_colours_counted") or []
    out = []
    g = stats["growth"]
    out.append({
        "name": "growth",
        "description": "area changed (either way)",
        "value": g,
        "threshold": rule.growth,
        "assessed": g is not None,
        "fired": fires["growth"],
        "detail": (spacing_note or "sizes not comparable") if g is None else
        f"area x{ratio:.2f} ({'grew' if ratio >= 1 else 'shrank'} by {100 * abs(ratio - 1):.0f}%), threshold a factor of "
        f"{1 + rule.growth:.2f} either way",
    })  # fmt: skip
    c = float(stats["new_colour"] or 0.0)  # never None
    out.append({
        "name": "new_colour",
        "description": "a colour absent before covers part of the lesion",
        "value": c,
        "threshold": rule.new_colour,
        "assessed": True,
        "fired": fires["new_colour"],
        "detail": (f"new: {', '.join(x.replace('_', ' ') for x in counted)}; the largest covers {100 * c:.0f}%" if counted else "no new colour")
        + (f" (a shift between light and dark brown is not counted: {', '.join(x.replace('_', ' ') for x in gained if x not in counted)})"
           if set(gained) - set(counted) else "")
        + f", threshold {100 * rule.new_colour:.0f}% of the lesion",
    })  # fmt: skip
    a = float(stats["asymmetry"] or 0.0)
    out.append({
        "name": "asymmetry",
        "description": "shape asymmetry index rose",
        "value": a,
        "threshold": rule.asymmetry,
        "assessed": True,
        "fired": fires["asymmetry"],
        "detail": f"mean shape asymmetry {a:+.3f}, threshold +{rule.asymmetry:.3f}",
    })  # fmt: skip
    return out


def assess_change(
    before: ABCDEResult | None,
    after: ABCDEResult | None,
    evolution: dict | None,
    *,
    rule: ChangeRule = CHANGE_RULE,
    spacing_note: str | None = None,
    reasons: list[str] | None = None,
    mask_dice: float | None = None,
) -> dict[str, Any]:
    """The summary of a comparison under ``rule``: ``verdict`` (``significant change``, ``no
    significant change`` or ``not assessed``), ``significant`` (bool or None), the ``criteria`` with
    their values and thresholds, the ``rule`` in words, how it was chosen, and a plain ``text``."""
    caveats = list(reasons or [])
    base = {"rule": rule.describe(), "rule_chosen": rule.chosen, "thresholds": {k: v for k, v in asdict(rule).items() if k != "chosen"}}
    if before is None or after is None or evolution is None:
        text = "Not assessed: " + ("; ".join(caveats) or "no measurements") + "."
        return {"verdict": NOT_ASSESSED, "significant": None, "criteria": [], **base, "caveats": caveats, "text": text}
    stats = change_statistics(before, after, sizes_comparable=evolution.get("area") is not None and before.spacing_known)
    criteria = _criteria(stats, evolution, rule, spacing_note)
    if not rule.assessable(mask_dice):
        why = (f"the two segmentations overlap little once registered (Dice {mask_dice:.2f}, below {rule.min_mask_dice:g}): "
               "they may outline different regions, so no change is called; compare the images yourself")  # fmt: skip
        return {"verdict": NOT_ASSESSED, "significant": None, "criteria": criteria, **base, "caveats": [*caveats, why],
                "text": f"Not assessed: {why}."}  # fmt: skip
    fired = [c for c in criteria if c["fired"]]
    verdict = SIGNIFICANT if fired else NOT_SIGNIFICANT
    shown = fired or [c for c in criteria if c["assessed"]]
    text = f"{verdict[0].upper()}{verdict[1:]}: " + "; ".join(c["detail"] for c in shown) + "."
    unassessed = [c["name"] for c in criteria if not c["assessed"]]
    if unassessed:
        text += f" Not assessed: {', '.join(unassessed)} ({spacing_note or 'sizes not comparable'})."
    return {"verdict": verdict, "significant": bool(fired), "criteria": criteria, **base, "caveats": caveats, "text": text}


def skin_gain(before_skin: tuple[float, ...], after_skin: tuple[float, ...]) -> np.ndarray | None:
    """Per-channel gain that gives the after image's skin the before image's skin colour (clipped to
    :data:`MAX_GAIN` either way), or None when a skin colour is unknown (all zero)."""
    b, a = np.asarray(before_skin, float), np.asarray(after_skin, float)
    if not (b.any() and a.any()):
        return None
    return np.clip(b / np.maximum(a, 1.0), 1.0 / MAX_GAIN, MAX_GAIN)


def _measure(image: np.ndarray, seg: Any, name: str, spacing: float | None) -> tuple[ABCDEResult | None, str | None]:
    if seg.quality == "not_found" or not seg.mask.any():
        return None, f"no lesion was found in the {name} image by the automatic segmentation"
    return measure_abcde(image, seg.mask, spacing), None


def compare_lesions(
    before: np.ndarray,
    after: np.ndarray,
    *,
    before_spacing_mm: float | None = None,
    after_spacing_mm: float | None = None,
    rule: ChangeRule = CHANGE_RULE,
) -> LesionComparison:
    """Compare two RGB uint8 images of one lesion, ``after`` taken later (see the module docstring).

    Returns a :class:`LesionComparison` whose ``result`` holds ``segmentation`` and ``abcde`` of
    each image, ``registration`` (transform, how the scale was set, NCC, overlap, mask Dice, fit),
    ``evolution`` (:func:`compare_evolution` plus the border change; None when a lesion was not
    found), ``summary`` (:func:`assess_change`) and ``notice``.

    Raises:
        ValueError: a bad image, or a bad or missing spacing (:func:`check_spacings`).
    """
    before = check_image(before, "before")
    after = check_image(after, "after")
    sb, sa = check_spacings(before_spacing_mm, after_spacing_mm)
    known = sb is not None and sa is not None
    seg_b, seg_a = segment_lesion(before), segment_lesion(after)
    # the same skin under another light: colours are classified after matching the after image's skin to the before image's
    gain = skin_gain(seg_b.skin_rgb, seg_a.skin_rgb)
    after_colour = after if gain is None else np.clip(np.rint(after * gain), 0, 255).astype(np.uint8)
    abcde_b, why_b = _measure(before, seg_b, "before", sb)
    abcde_a, why_a = _measure(after_colour, seg_a, "after", sa)
    if known:
        registration = register_pair(before, after, scale=sa / sb, scale_source="pixel spacings")  # type: ignore[operator]
        spacing_note = None
    else:
        registration = register_pair(before, after)
        spacing_note = (
            "pixel spacings unknown: a size difference cannot be told from a different magnification "
            f"(the registration finds the after image magnified x{1 / registration.scale:.2f} relative to the before image)"
        )
    shape = before.shape[:2]
    aligned, valid = warp_onto(after, registration, shape)
    aligned_mask, _ = warp_onto(seg_a.mask, registration, shape)
    dice = None  # no lesion in one image; 0 when the registration puts the after lesion off the before image
    if seg_b.mask.any() and seg_a.mask.any():
        dice = float(2 * (seg_b.mask & aligned_mask).sum() / (seg_b.mask.sum() + aligned_mask.sum()))
    fits = registration.ncc >= REGISTRATION_MIN_NCC
    reg = {
        **registration.to_dict(),
        "mask_dice": None if dice is None else round(dice, 4),
        "fit": "good" if fits else "poor",
        "fit_rule": f"good when the NCC after registration is at least {REGISTRATION_MIN_NCC}",
    }
    reasons = [r for r in (why_b, why_a) if r]
    evolution = None
    if abcde_b is not None and abcde_a is not None:
        same_px_grid = not known and before.shape == after.shape
        evolution = compare_evolution(abcde_b, abcde_a, compare_sizes=known or same_px_grid)
        evolution["new_colours_counted"] = new_colours(abcde_b, abcde_a)
        evolution["border"] = {
            "convexity_defect": {"before": abcde_b.border_irregularity, "after": abcde_a.border_irregularity,
                                 "change": abcde_a.border_irregularity - abcde_b.border_irregularity},
            "abrupt_sectors": {"before": abcde_b.abrupt_border_sectors, "after": abcde_a.abrupt_border_sectors,
                               "change": abcde_a.abrupt_border_sectors - abcde_b.abrupt_border_sectors},
        }  # fmt: skip
        if not known:
            evolution["size_note"] = (
                "pixel sizes, assuming both images have the same magnification (not checked: give pixel spacings)"
                if same_px_grid else "sizes not compared: the images differ in size and their pixel spacings are unknown"
            )
    caveats = []
    if not fits:
        caveats.append(f"the registered images fit poorly (NCC {registration.ncc:.2f}): check that both show the same lesion")
    for name, seg in (("before", seg_b), ("after", seg_a)):
        if seg.quality in ("touches_border", "low_contrast"):
            caveats.append(f"the {name} segmentation is {seg.quality.replace('_', ' ')}: its size is uncertain")
    summary = assess_change(abcde_b, abcde_a, evolution, rule=rule, spacing_note=spacing_note, reasons=reasons, mask_dice=dice)
    summary["caveats"] = summary["caveats"] + caveats
    result = {
        "notice": NOTICE,
        "pixel_spacing_mm": {"before": sb, "after": sa},
        "colour_normalisation": {
            "after_gain_rgb": None if gain is None else [round(float(g), 4) for g in gain],
            "note": "the after image's colours are measured after scaling each channel so that its skin matches the before "
            "image's skin (the same skin under another light); segmentation and sizes use the image as given",
        },
        "segmentation": {name: {"quality": s.quality, "method": s.method, "bbox_top_bottom_left_right": list(s.bbox)}
                         for name, s in (("before", seg_b), ("after", seg_a))},  # fmt: skip
        "abcde": {"before": None if abcde_b is None else abcde_b.to_dict(), "after": None if abcde_a is None else abcde_a.to_dict()},
        "registration": reg,
        "evolution": evolution,
        "summary": summary,
    }
    arrays = {
        "before_mask": seg_b.mask,
        "after_mask": seg_a.mask,
        "after_aligned": aligned,
        "after_mask_aligned": aligned_mask,
        "aligned_valid": valid,
    }
    return LesionComparison(to_jsonable(result), arrays, abcde_b, abcde_a, registration)

