"""Registration of a follow-up image onto the first: the known camera move is recovered, scale fixed or estimated."""

from __future__ import annotations

import numpy as np
import pytest

from skinlesion.data.synthetic import fits_followup, render_followup, sample_spec
from skinlesion.explain.registration import register_pair, warp_onto

SIZE = (96, 128)


def _pair(label: str, seed: int, rotation: float, zoom: float, shift: tuple[float, float], **kw):  # noqa: ANN202
    spec = fits_followup(sample_spec(label, np.random.default_rng(seed), size=SIZE), SIZE, 0.0, zoom, 6.0)
    return render_followup(spec, spec, seed, size=SIZE, rotation_deg=rotation, zoom=zoom, shift_px=shift, **kw)


def _tre(pair, matrix: np.ndarray) -> float:  # noqa: ANN001
    """Mean distance (before pixels) between where ``matrix`` and the truth put the lesion's pixels."""
    rows, cols = np.nonzero(pair.after_mask)
    q = np.stack([cols, rows, np.ones_like(cols)]).astype(float)
    return float(np.hypot(*(matrix @ q - pair.matrix @ q)[:2]).mean())


def test_a_turned_shifted_view_is_registered_with_the_known_scale() -> None:
    pair = _pair("MEL", 5, rotation=125.0, zoom=1.0, shift=(5.0, -4.0), hair=(True, False), brightness=(1.0, 0.85))
    reg = register_pair(pair.before, pair.after, scale=1.0)
    assert _tre(pair, reg.matrix) < 1.0
    assert reg.rotation_deg == pytest.approx(125.0, abs=2.0) and reg.scale == 1.0 and reg.scale_source == "pixel spacings"
    assert reg.ncc > 0.8 and reg.ncc > reg.ncc_unregistered + 0.3 and reg.overlap > 0.7
    d = reg.to_dict()
    assert d["matrix"][2] == [0.0, 0.0, 1.0] and "rotations" in d["method"] and "scales" not in d["method"]


def test_without_spacings_the_magnification_is_estimated() -> None:
    pair = _pair("BKL", 2, rotation=-30.0, zoom=1.25, shift=(0.0, 3.0))
    reg = register_pair(pair.before, pair.after)
    assert reg.scale_source == "estimated"
    assert reg.scale == pytest.approx(1 / 1.25, rel=0.03)  # before-pixels per after-pixel
    assert _tre(pair, reg.matrix) < 1.5


def test_an_image_registers_onto_itself_and_warps_onto_its_grid() -> None:
    pair = _pair("NV", 1, rotation=0.0, zoom=1.0, shift=(0.0, 0.0))
    reg = register_pair(pair.before, pair.before, scale=1.0)
    assert np.allclose(reg.matrix, np.eye(3), atol=0.05) and reg.ncc > 0.99 and reg.ncc_unregistered > 0.99
    image, valid = warp_onto(pair.before, reg, SIZE)
    assert image.dtype == np.uint8 and image.shape == (*SIZE, 3) and valid.mean() > 0.98
    mask, _ = warp_onto(pair.before_mask, reg, SIZE)
    assert mask.dtype == bool and (mask ^ pair.before_mask).sum() <= 0.02 * pair.before_mask.sum()


def test_bad_arguments_name_themselves() -> None:
    image = np.zeros((*SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="'scale' parameter must be a positive number or None"):
        register_pair(image, image, scale=0.0)
    with pytest.raises(ValueError, match="'after' parameter must have shape"):
        register_pair(image, image[..., 0])
