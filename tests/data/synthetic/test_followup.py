"""Synthetic follow-up pairs: each kind of change is what it says, and the camera move is exact."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from skinlesion.data.synthetic import (
    ColourLayer,
    LesionSpec,
    change_spec,
    fits_followup,
    render_followup,
    sample_spec,
)

SIZE = (96, 128)


def _spec() -> LesionSpec:
    return LesionSpec("NV", centre=(47.5, 63.5), radius_px=14.0, elongation=0.8, angle=0.4,
                      layers=(ColourLayer("light_brown"), ColourLayer("dark_brown", "network", 0.3, 3.0)))  # fmt: skip


def test_each_change_is_the_kind_and_amount_asked() -> None:
    spec = _spec()
    rng = np.random.default_rng(0)
    assert change_spec(spec, "none", 0.5, rng) == spec
    base = render_followup(spec, spec, 0, size=SIZE, noise=0.0)
    grown = render_followup(spec, change_spec(spec, "growth", 0.5, rng), 0, size=SIZE, noise=0.0)
    assert grown.after_truth.area_px / grown.before_truth.area_px == pytest.approx(1.5, rel=0.04)
    coloured = render_followup(spec, change_spec(spec, "new_colour", 0.2, np.random.default_rng(1)), 0, size=SIZE, noise=0.0)
    gained = set(coloured.after_truth.colours) - set(coloured.before_truth.colours)
    assert len(gained) == 1 and not gained & {"light_brown", "dark_brown"}
    lopsided = render_followup(spec, change_spec(spec, "asymmetry", 0.2, rng), 0, size=SIZE, noise=0.0)
    assert lopsided.after_truth.asymmetry > base.after_truth.asymmetry + 0.05
    assert base.after_truth.area_px == base.before_truth.area_px


def test_the_camera_matrix_maps_the_second_view_onto_the_first() -> None:
    spec = fits_followup(sample_spec("MEL", np.random.default_rng(3), size=SIZE), SIZE, 0.0, 1.2, 5.0)
    pair = render_followup(spec, spec, 1, size=SIZE, rotation_deg=70.0, zoom=1.2, shift_px=(4.0, -3.0))
    assert pair.after_spacing_mm == pytest.approx(pair.before_spacing_mm / 1.2)
    m = pair.matrix
    assert math.hypot(m[0, 0], m[1, 0]) == pytest.approx(1 / 1.2) and math.degrees(math.atan2(m[1, 0], m[0, 0])) == pytest.approx(70.0)
    rows, cols = np.nonzero(pair.after_mask)
    mapped = m @ np.stack([cols, rows, np.ones_like(cols)]).astype(float)
    r, c = np.clip(np.rint(mapped[1]).astype(int), 0, SIZE[0] - 1), np.clip(np.rint(mapped[0]).astype(int), 0, SIZE[1] - 1)
    assert pair.before_mask[r, c].mean() > 0.97  # the second view's lesion lands on the first view's
    # the lesion is the same in millimetres: the zoom is in the spacing
    assert pair.after_mask.sum() * pair.after_spacing_mm**2 == pytest.approx(pair.before_mask.sum() * pair.before_spacing_mm**2, rel=0.05)


def test_bad_changes_and_lesions_that_do_not_fit_are_refused() -> None:
    spec, rng = _spec(), np.random.default_rng(0)
    with pytest.raises(ValueError, match="'kind' parameter must be one of"):
        change_spec(spec, "darker", 0.1, rng)
    with pytest.raises(ValueError, match="'amount' parameter must be a number >= 0"):
        change_spec(spec, "growth", -0.1, rng)
    with pytest.raises(ValueError, match=r"area fraction it covers, in \(0, 1\]"):
        change_spec(spec, "new_colour", 1.5, rng)
    rainbow = replace(spec, layers=tuple(ColourLayer(c) if i == 0 else ColourLayer(c, "blotch", 0.1, 3.0) for i, c in enumerate(
        ("white", "red", "light_brown", "dark_brown", "blue_grey", "black"))))  # fmt: skip
    with pytest.raises(ValueError, match="already has all six dermoscopic colours"):
        change_spec(rainbow, "new_colour", 0.1, rng)
    with pytest.raises(ValueError, match="does not fit inside"):
        render_followup(spec, change_spec(spec, "growth", 15.0, rng), 0, size=SIZE)
    with pytest.raises(ValueError, match="'zoom' parameter must be in"):
        render_followup(spec, spec, 0, size=SIZE, zoom=10.0)
