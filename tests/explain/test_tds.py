"""Stolz ABCD rule: score arithmetic, bands, input errors and the differential-structure heuristics."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from skinlesion.data.synthetic import ColourLayer, LesionSpec, render_lesion
from skinlesion.explain.abcde import measure_abcde
from skinlesion.explain.tds import (
    TDSComponents,
    dermoscopy_score,
    lesion_structures,
    total_dermoscopy_score,
)

_BASE = LesionSpec("NV", centre=(74.5, 99.5), radius_px=32.0, elongation=0.8, angle=0.3, texture_seed=3)


@pytest.mark.parametrize(
    ("a", "b", "c", "d", "score", "band"),
    [
        (0, 0, 1, 1, 1.0, "benign"),
        (1, 4, 3, 3, 4.7, "benign"),  # just below 4.75
        (1, 5, 3, 3, 4.8, "suspicious"),
        (1, 0, 4, 4, 5.3, "suspicious"),
        (1, 5, 4, 4, 5.8, "likely_melanoma"),
        (2, 8, 6, 5, 8.9, "likely_melanoma"),
    ],
)
def test_score_is_the_stolz_formula(a: int, b: int, c: int, d: int, score: float, band: str) -> None:
    result = total_dermoscopy_score(TDSComponents(a, b, c, d))
    assert result.score == pytest.approx(1.3 * a + 0.1 * b + 0.5 * c + 0.5 * d) == pytest.approx(score)
    assert result.band == band
    mapping = total_dermoscopy_score({"asymmetry": a, "border": b, "colours": c, "structures": d})
    assert mapping.score == result.score and "not a diagnosis" in mapping.notice


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(asymmetry=3, border=0, colours=1, structures=1), r"'asymmetry' component must be an integer in \[0, 2\]"),
        (dict(asymmetry=0, border=9, colours=1, structures=1), r"'border' component must be an integer in \[0, 8\]"),
        (dict(asymmetry=0, border=0, colours=0, structures=1), r"'colours' component must be an integer in \[1, 6\]"),
        (dict(asymmetry=0, border=0, colours=1, structures=6), r"'structures' component must be an integer in \[1, 5\]"),
        (dict(asymmetry=True, border=0, colours=1, structures=1), "'asymmetry' component must be an integer"),
        (dict(asymmetry=1.5, border=0, colours=1, structures=1), "'asymmetry' component must be an integer"),
    ],
)
def test_out_of_range_components_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TDSComponents(**kwargs)
    with pytest.raises(ValueError, match=message):
        total_dermoscopy_score(kwargs)


def test_other_input_errors() -> None:
    with pytest.raises(ValueError, match=r"must have the keys .*missing \['structures'\]"):
        total_dermoscopy_score({"asymmetry": 0, "border": 0, "colours": 1})
    with pytest.raises(ValueError, match="'result_or_components' parameter must be an ABCDEResult"):
        total_dermoscopy_score([0, 0, 1, 1])  # type: ignore[arg-type]
    image, mask, _ = render_lesion(replace(_BASE, layers=(ColourLayer("light_brown"),)), 0)
    result = measure_abcde(image, mask)
    with pytest.raises(ValueError, match="'structures' parameter is required with an ABCDEResult"):
        total_dermoscopy_score(result)
    with pytest.raises(ValueError, match=r"'structures' component must be an integer in \[1, 5\]"):
        total_dermoscopy_score(result, 0)


_L = ColourLayer
_STRUCTURE_SPECS = {
    "homogeneous": ((_L("light_brown"),), {"structureless"}, set()),
    "network": ((_L("light_brown"), _L("dark_brown", "network", coverage=0.4, scale_px=12.0)),
                {"pigment_network"}, {"structureless", "globules"}),
    "dots": ((_L("light_brown"), _L("black", "globules", coverage=0.06, scale_px=3.0)),
             {"dots"}, {"pigment_network", "structureless"}),
    "globules": ((_L("light_brown"), _L("dark_brown", "globules", coverage=0.2, scale_px=5.0)),
                 {"globules"}, {"pigment_network", "structureless"}),
    "streaks": ((_L("light_brown"), _L("dark_brown", "streaks", coverage=0.12, scale_px=6.0)),
                {"streaks"}, {"pigment_network"}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(_STRUCTURE_SPECS))
def test_structures_found_on_synthetic_patterns(name: str) -> None:
    layers, expected, absent = _STRUCTURE_SPECS[name]
    image, mask, _ = render_lesion(replace(_BASE, layers=layers), 0)
    found = lesion_structures(image, mask)
    assert expected <= set(found.present), found
    assert not absent & set(found.present), found
    assert found.count == max(1, len(found.present))


def test_homogeneous_symmetric_naevus_scores_lower_than_a_melanoma_like_lesion() -> None:
    naevus = LesionSpec("NV", centre=(74.5, 99.5), radius_px=20.0, elongation=0.9, edge_width_px=4.0,
                        layers=(_L("light_brown"),))  # fmt: skip
    mel_layers = (_L("light_brown"), _L("dark_brown", "network", 0.3, 7.0), _L("blue_grey", "blotch", 0.25, 20.0,
                  eccentricity=1.0), _L("black", "globules", 0.1, 4.0), _L("dark_brown", "streaks", 0.12, 6.0))  # fmt: skip
    melanoma = LesionSpec("MEL", centre=(74.5, 99.5), radius_px=45.0, elongation=0.6, edge_width_px=0.5,
                          asym_harmonics=((1, 0.15, 0.3), (2, 0.1, 1.9), (3, 0.08, 4.0)),
                          border_harmonics=((7, 0.05, 0.0), (11, 0.03, 1.0)), layers=mel_layers)  # fmt: skip
    low, low_abcde = dermoscopy_score(*render_lesion(naevus, 0)[:2], pixel_spacing_mm=0.11)
    high, high_abcde = dermoscopy_score(render_lesion(melanoma, 0)[0], pixel_spacing_mm=0.11)  # segmented
    assert low_abcde.segmentation == "provided" and high_abcde.segmentation == "ok"
    assert low.band == "benign" and low.components.asymmetry == 0 and low.components.colours == 1
    assert high.band == "likely_melanoma" and high.components.asymmetry == 2 and high.components.colours >= 3
    assert high.score > low.score + 2
    assert low_abcde.diameter_unit == "mm"
    d = json.loads(json.dumps(high.to_dict()))
    assert d["components"]["asymmetry"] == 2 and d["band"] == "likely_melanoma" and d["structures"]
