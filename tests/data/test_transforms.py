from __future__ import annotations

import numpy as np
import pytest

from skinlesion.data.transforms import eval_transform, to_chw_tensor, train_transform

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _img() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)


def test_eval_transform_resizes_and_normalises_with_given_stats() -> None:
    x = to_chw_tensor(eval_transform((60, 80), MEAN, STD)(image=np.full((150, 200, 3), 191, np.uint8))["image"])
    assert tuple(x.shape) == (3, 60, 80)
    assert float(x.mean()) == pytest.approx((191 / 255 - 0.5) / 0.25, abs=1e-3)


@pytest.mark.parametrize("level", ["none", "light", "medium", "strong"])
def test_train_levels_give_input_size(level: str) -> None:
    out = train_transform((64, 96), MEAN, STD, level)(image=_img())["image"]
    assert out.shape == (64, 96, 3) and out.dtype == np.float32


def test_unknown_level_and_interpolation_are_named() -> None:
    with pytest.raises(ValueError, match="augment.level"):
        train_transform((64, 64), MEAN, STD, "extreme")
    with pytest.raises(ValueError, match="'interpolation' parameter"):
        eval_transform((64, 64), MEAN, STD, "lanczos9")
