"""ABCDE measurements against the synthetic generator's measured ground truth, units and errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import spearmanr

from skinlesion.data.synthetic import (
    SYNTHETIC_CLASSES,
    ColourLayer,
    LesionSpec,
    render_lesion,
    sample_spec,
)
from skinlesion.explain.abcde import (
    NOTICE,
    ABCDEResult,
    compare_evolution,
    measure_abcde,
)

# Measured on the fixture below (4 clean lesions per class, spec seeds 2000-2003): with the
# automatic segmentation the diameter error is at most 3.8% (median 0.2%), the colour sets are all
# exact, the asymmetric-axes count agrees on 26/28 and the Spearman correlation of the shape
# asymmetry with the truth is 0.951. Bounds below leave a margin.
MAX_DIAMETER_ERROR = 0.05
MIN_ASYMMETRY_SPEARMAN = 0.85
MIN_AXES_AGREEMENT = 0.75
SPACING = 0.11


@pytest.fixture(scope="module")
def measured() -> list[tuple]:
    """(truth, result on the true mask, result on the automatic segmentation) per lesion."""
    out = []
    for label in SYNTHETIC_CLASSES:
        for seed in range(4):
            spec = sample_spec(label, np.random.default_rng(2000 + seed))
            image, mask, truth = render_lesion(spec, seed)
            out.append((truth, measure_abcde(image, mask, truth.pixel_spacing_mm),
                        measure_abcde(image, None, truth.pixel_spacing_mm)))  # fmt: skip
    return out


def _disc(radius: float = 25.0, **kw) -> LesionSpec:
    return LesionSpec("NV", centre=(74.5, 99.5), radius_px=radius, layers=(ColourLayer("dark_brown"),), **kw)


def test_true_mask_reproduces_the_ground_truth(measured) -> None:
    for truth, on_mask, _ in measured:
        assert on_mask.diameter_px == pytest.approx(truth.diameter_px, rel=1e-9)
        assert on_mask.diameter_mm == pytest.approx(truth.diameter_mm, rel=1e-9)
        assert on_mask.asymmetry == pytest.approx(truth.asymmetry)
        assert on_mask.border_irregularity == pytest.approx(truth.border_irregularity)
        assert on_mask.area_px == truth.area_px
        assert set(on_mask.colours) == set(truth.colours), (truth.label, truth.colours, on_mask.colour_fractions)
        assert on_mask.asymmetric_axes == truth.asymmetric_axes


def test_segmented_diameter_is_within_5_percent(measured) -> None:
    errors = [abs(seg.diameter_mm / truth.diameter_mm - 1) for truth, _, seg in measured]
    assert max(errors) <= MAX_DIAMETER_ERROR, errors


def test_segmented_colour_sets_are_exact_on_clean_images(measured) -> None:
    wrong = [(t.label, t.colours, s.colours) for t, _, s in measured if set(s.colours) != set(t.colours)]
    assert not wrong


def test_segmented_asymmetry_preserves_the_ordering(measured) -> None:
    rho = spearmanr([s.asymmetry for _, _, s in measured], [t.asymmetry for t, _, _ in measured])[0]
    assert rho >= MIN_ASYMMETRY_SPEARMAN
    agree = np.mean([s.asymmetric_axes == t.asymmetric_axes for t, _, s in measured])
    assert agree >= MIN_AXES_AGREEMENT


def test_units_are_never_silently_millimetres() -> None:
    image, mask, _ = render_lesion(_disc(), 0)
    px = measure_abcde(image, mask)
    assert px.diameter_unit == "px" and not px.spacing_known
    assert px.diameter_mm is None and px.area_mm2 is None and px.larger_than_6mm is None
    assert px.diameter == px.diameter_px and px.area == px.area_px
    mm = measure_abcde(image, mask, pixel_spacing_mm=SPACING)
    assert mm.diameter_unit == "mm" and mm.diameter == pytest.approx(px.diameter_px * SPACING)
    assert mm.area_mm2 == pytest.approx(px.area_px * SPACING**2)
    assert mm.larger_than_6mm is (px.diameter_px * SPACING > 6.0)
    small = measure_abcde(*render_lesion(_disc(radius=12.0), 0)[:2], pixel_spacing_mm=SPACING)
    assert small.diameter_mm < 6.0 and small.larger_than_6mm is False
    assert mm.diameter_mm > 5.0 and measure_abcde(image, mask, 0.2).larger_than_6mm is True
    d = json.loads(json.dumps(mm.to_dict()))
    assert d["notice"] == NOTICE and "not a diagnosis" in NOTICE and d["diameter_unit"] == "mm"


def test_border_sectors_follow_edge_sharpness() -> None:
    sharp = measure_abcde(*render_lesion(_disc(edge_width_px=0.5), 0)[:2])
    soft = measure_abcde(*render_lesion(_disc(edge_width_px=8.0), 0)[:2])
    assert sharp.abrupt_border_sectors == 8 and soft.abrupt_border_sectors == 0
    assert sharp.compactness == pytest.approx(1.0, abs=0.1)
    ragged = replace(_disc(), elongation=0.6, border_harmonics=((9, 0.12, 0.0), (14, 0.06, 1.0)))
    assert measure_abcde(*render_lesion(ragged, 0)[:2]).compactness > 1.4


def test_colour_asymmetry_counts_an_axis_of_a_symmetric_shape() -> None:
    layers = (ColourLayer("light_brown"), ColourLayer("blue_grey", "blotch", coverage=0.4, scale_px=30.0,
                                                      eccentricity=1.0, direction=np.pi / 2))  # fmt: skip
    spec = replace(_disc(radius=30.0), elongation=0.7, layers=layers)
    image, mask, truth = render_lesion(spec, 0)
    result = measure_abcde(image, mask)
    assert max(result.shape_asymmetry_axes) < 0.06
    assert max(result.colour_asymmetry_axes) >= 0.2 and result.asymmetric_axes >= 1
    assert result.asymmetric_axes == truth.asymmetric_axes


def test_evolution_compares_like_with_like() -> None:
    before_img, before_mask, _ = render_lesion(_disc(radius=20.0), 0)
    grown = replace(_disc(radius=25.0), layers=(ColourLayer("dark_brown"), ColourLayer("black", "blotch", 0.2, 20.0)))
    after_img, after_mask, _ = render_lesion(grown, 0)
    before = measure_abcde(before_img, before_mask, SPACING)
    after = measure_abcde(after_img, after_mask, SPACING)
    change = compare_evolution(before, after)
    assert change["unit"] == "mm" and change["diameter"]["relative_change"] == pytest.approx(0.25, abs=0.04)
    assert change["area"]["change"] > 0 and change["colours_gained"] == ["black"] and change["colours_lost"] == []
    assert change["notice"] == NOTICE
    # finer pixels of the same lesion: millimetres are already converted, so they compare
    zoomed = measure_abcde(before_img, before_mask, SPACING / 2)
    assert compare_evolution(zoomed, before)["diameter"]["change"] == pytest.approx(before.diameter_mm / 2)
    px = measure_abcde(after_img, after_mask)
    with pytest.raises(ValueError, match="Cannot compare a measurement in millimetres with one in pixels"):
        compare_evolution(before, px)
    small_img, small_mask, _ = render_lesion(replace(_disc(radius=10.0), centre=(31.5, 31.5)), 0, size=(64, 64))
    with pytest.raises(ValueError, match="pixel measurements of images of different sizes"):
        compare_evolution(measure_abcde(small_img, small_mask), px)
    assert compare_evolution(measure_abcde(before_img, before_mask), px)["unit"] == "px"
    with pytest.raises(ValueError, match="'after' parameter must be an ABCDEResult"):
        compare_evolution(before, after.to_dict())


def test_input_errors_name_the_parameter() -> None:
    image, mask, _ = render_lesion(_disc(), 0)
    with pytest.raises(ValueError, match="'mask' parameter is empty"):
        measure_abcde(image, np.zeros(mask.shape, bool))
    with pytest.raises(ValueError, match=r"'mask' parameter must have the image's shape \(150, 200\)"):
        measure_abcde(image, mask[:, :100])
    with pytest.raises(ValueError, match="'mask' parameter must be boolean"):
        measure_abcde(image, mask * 2)
    for bad in (-0.1, 0.0, float("nan"), "0.1mm"):
        with pytest.raises(ValueError, match="'pixel_spacing_mm' parameter must be a positive number"):
            measure_abcde(image, mask, bad)
    with pytest.raises(ValueError, match="dtype uint8"):
        measure_abcde(image.astype(np.float32), mask)
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        measure_abcde(image[..., 0], mask)
    blank = np.full((150, 200, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="No lesion was found in 'image'"):
        measure_abcde(blank)
    assert isinstance(measure_abcde(image, mask.astype(np.uint8)), ABCDEResult)
