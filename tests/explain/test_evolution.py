"""Follow-up comparison: known changes are called significant, an unchanged lesion is not, and sizes
are claimed in millimetres only with both pixel spacings."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from skinlesion.data.synthetic import ColourLayer, LesionSpec, change_spec, render_followup
from skinlesion.explain.evolution import CHANGE_RULE, check_spacings, compare_lesions

SIZE = (96, 128)
SPACING = 0.15


def _spec() -> LesionSpec:
    return LesionSpec("NV", centre=(47.5, 63.5), radius_px=15.0, elongation=0.75, angle=0.5, pixel_spacing_mm=SPACING,
                      layers=(ColourLayer("light_brown"), ColourLayer("dark_brown", "blotch", 0.3, 6.0)))  # fmt: skip


def _compare(kind: str, amount: float, *, spacings: bool = True, zoom: float = 1.0):  # noqa: ANN202
    spec = _spec()
    after = change_spec(spec, kind, amount, np.random.default_rng(4))
    pair = render_followup(spec, after, 2, size=SIZE, rotation_deg=40.0, zoom=zoom, shift_px=(3.0, -2.0), brightness=(1.0, 0.9))
    kw = {"before_spacing_mm": pair.before_spacing_mm, "after_spacing_mm": pair.after_spacing_mm} if spacings else {}
    return compare_lesions(pair.before, pair.after, **kw), pair


def _criteria(result: dict) -> dict[str, dict]:
    return {c["name"]: c for c in result["summary"]["criteria"]}


def test_an_unchanged_lesion_photographed_again_is_not_a_significant_change() -> None:
    c, _ = _compare("none", 0.0, zoom=1.2)  # another pose and magnification, both spacings known
    r = c.result
    assert r["summary"]["verdict"] == "no significant change" and r["summary"]["significant"] is False
    assert r["evolution"]["unit"] == "mm" and abs(r["evolution"]["area"]["relative_change"]) < 0.1
    assert all(k["assessed"] and not k["fired"] for k in r["summary"]["criteria"])
    assert r["registration"]["scale_source"] == "pixel spacings" and r["registration"]["scale"] == pytest.approx(1 / 1.2, rel=1e-4)
    assert r["registration"]["fit"] == "good" and r["registration"]["mask_dice"] > 0.9
    assert r["summary"]["text"].startswith("No significant change:")
    assert c.arrays["after_aligned"].shape == (*SIZE, 3) and c.arrays["after_mask_aligned"].dtype == bool


def test_growth_a_new_colour_and_asymmetry_are_each_called_significant() -> None:
    grown, _ = _compare("growth", 1.0)
    g = _criteria(grown.result)["growth"]
    assert grown.result["summary"]["verdict"] == "significant change" and g["fired"] and g["value"] == pytest.approx(1.0, abs=0.1)
    assert grown.result["evolution"]["diameter"]["relative_change"] == pytest.approx(np.sqrt(2.0) - 1, abs=0.05)
    assert "grew by" in grown.result["summary"]["text"]

    coloured, pair = _compare("new_colour", 0.4)
    new = sorted(set(pair.after_truth.colours) - set(pair.before_truth.colours))
    assert coloured.result["evolution"]["colours_gained"] == new and _criteria(coloured.result)["new_colour"]["fired"]
    assert new[0].replace("_", " ") in coloured.result["summary"]["text"]

    lopsided, _ = _compare("asymmetry", 0.25)
    assert _criteria(lopsided.result)["asymmetry"]["fired"] and lopsided.result["summary"]["significant"] is True


def test_without_spacings_growth_is_not_assessed_and_no_millimetre_is_claimed() -> None:
    c, _ = _compare("growth", 1.0, spacings=False)
    r = c.result
    g = _criteria(r)["growth"]
    assert g["assessed"] is False and g["fired"] is None and "pixel spacings unknown" in g["detail"]
    assert r["evolution"]["unit"] == "px" and "same magnification" in r["evolution"]["size_note"]
    assert r["abcde"]["before"]["diameter_mm"] is None and r["pixel_spacing_mm"] == {"before": None, "after": None}
    assert r["summary"]["verdict"] == "no significant change" and "Not assessed: growth" in r["summary"]["text"]
    assert r["registration"]["scale_source"] == "estimated"
    # images of different sizes without spacings: sizes are not compared at all
    small = np.asarray(Image.fromarray(render_followup(_spec(), _spec(), 0, size=SIZE).after).resize((160, 120)))
    other = compare_lesions(render_followup(_spec(), _spec(), 0, size=SIZE).before, small).result
    assert other["evolution"]["unit"] == "not compared" and other["evolution"]["area"] is None
    assert "differ in size" in other["evolution"]["size_note"]


def test_one_spacing_alone_and_bad_spacings_are_refused() -> None:
    with pytest.raises(ValueError, match="pixel spacing of the before image is given but not that of the after image"):
        check_spacings(0.1, None)
    with pytest.raises(ValueError, match="pixel spacing of the after image is given but not that of the before image"):
        check_spacings(None, 0.1)
    with pytest.raises(ValueError, match="'pixel_spacing_mm' parameter must be a positive number"):
        check_spacings(-1.0, 0.1)
    assert check_spacings(None, None) == (None, None) and check_spacings(0.1, 0.2) == (0.1, 0.2)


def test_a_missing_lesion_is_not_assessed_and_says_which_image() -> None:
    spec = _spec()
    pair = render_followup(spec, spec, 0, size=SIZE)
    skin = np.full((*SIZE, 3), (226, 184, 166), np.uint8)
    r = compare_lesions(pair.before, skin).result
    assert r["summary"]["verdict"] == "not assessed" and r["summary"]["significant"] is None
    assert "no lesion was found in the after image" in r["summary"]["text"]
    assert r["evolution"] is None and r["abcde"]["after"] is None and r["abcde"]["before"] is not None


def test_the_rule_fires_on_reaching_a_threshold_and_skips_what_is_not_assessed() -> None:
    rule = replace(CHANGE_RULE, growth=0.2, new_colour=0.1, asymmetry=0.05)
    assert rule.fires({"growth": 0.2, "new_colour": 0.0, "asymmetry": 0.049}) == {"growth": True, "new_colour": False, "asymmetry": False}
    assert rule.fires({"growth": None, "new_colour": 0.1, "asymmetry": -0.3}) == {"growth": None, "new_colour": True, "asymmetry": False}
    assert "a factor of 1.20 or more either way (grew by 20% or shrank by 17%" in rule.describe() and CHANGE_RULE.chosen


def _abcde(*layers: ColourLayer):  # noqa: ANN202
    from skinlesion.data.synthetic import render_lesion
    from skinlesion.explain.abcde import measure_abcde

    image, mask, _ = render_lesion(replace(_spec(), layers=layers), 0, size=SIZE, noise=0.0)
    return measure_abcde(image, mask, SPACING)


def test_a_brown_shade_shift_is_not_a_new_colour_but_blue_grey_is() -> None:
    from skinlesion.explain.evolution import assess_change, change_statistics, new_colours

    light = _abcde(ColourLayer("light_brown"))
    shifted = _abcde(ColourLayer("light_brown"), ColourLayer("dark_brown", "blotch", 0.4, 6.0))
    blue = _abcde(ColourLayer("light_brown"), ColourLayer("blue_grey", "blotch", 0.4, 6.0))
    assert "dark_brown" in shifted.colours and new_colours(light, shifted) == []
    assert change_statistics(light, shifted, sizes_comparable=True)["new_colour"] == 0.0
    assert new_colours(light, blue) == ["blue_grey"]
    assert change_statistics(light, blue, sizes_comparable=True)["new_colour"] == pytest.approx(blue.colour_fractions["blue_grey"])
    # the reported detail names what was and was not counted
    from skinlesion.explain.abcde import compare_evolution

    evolution = {**compare_evolution(light, shifted), "new_colours_counted": new_colours(light, shifted)}
    detail = {c["name"]: c for c in assess_change(light, shifted, evolution)["criteria"]}["new_colour"]["detail"]
    assert "no new colour" in detail and "shift between light and dark brown is not counted: dark brown" in detail


def test_segmentations_that_do_not_overlap_once_registered_are_not_assessed() -> None:
    from skinlesion.explain.abcde import compare_evolution
    from skinlesion.explain.evolution import assess_change

    a = _abcde(ColourLayer("light_brown"))
    evolution = {**compare_evolution(a, a), "new_colours_counted": []}
    low = assess_change(a, a, evolution, mask_dice=CHANGE_RULE.min_mask_dice - 0.01)
    assert low["verdict"] == "not assessed" and low["significant"] is None and "overlap little" in low["text"]
    assert [c["name"] for c in low["criteria"]] == ["growth", "new_colour", "asymmetry"]  # still shown
    assert assess_change(a, a, evolution, mask_dice=CHANGE_RULE.min_mask_dice)["verdict"] == "no significant change"
    assert CHANGE_RULE.assessable(None) and not CHANGE_RULE.assessable(0.1)
