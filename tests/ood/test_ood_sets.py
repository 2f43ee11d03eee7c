"""Generated OOD sets: deterministic for a seed, the right count, RGB uint8."""

from __future__ import annotations

import numpy as np
import pytest

from skinlesion.ood import sets


def _derm(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (150, 200, 3), dtype=np.uint8) for _ in range(n)]


def _check(s: sets.OODSet, n: int) -> None:
    assert len(s) == n and s.description
    for im in s.images:
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and min(im.shape[:2]) >= 8


def _same(a: sets.OODSet, b: sets.OODSet) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))


@pytest.mark.parametrize(
    ("make", "n"),
    [
        (lambda seed: sets.documents(6, seed), 6 + 2),  # + scikit-image's two scanned text images
        (lambda seed: sets.noise(10, seed), 10),
        (lambda seed: sets.uniform(seed), 22),
        (lambda seed: sets.colour_distorted(_derm(), seed), 5),
        (lambda seed: sets.blurred(_derm(), seed), 5),
        (lambda seed: sets.synthetic_lesions(1, seed), 7),
    ],
)
def test_sets_are_deterministic_sized_rgb_uint8(make, n: int) -> None:  # noqa: ANN001
    a, b = make(0), make(0)
    _check(a, n)
    assert _same(a, b)


def test_photographs_come_from_scikit_image_without_download() -> None:
    p = sets.photographs(crops_per_image=1, seed=0)
    _check(p, 2 * len(sets.PHOTOGRAPHS))  # every listed photograph ships with scikit-image
    assert _same(p, sets.photographs(crops_per_image=1, seed=0))
    assert not _same(p, sets.photographs(crops_per_image=1, seed=1))


def test_distortions_change_the_images_and_seeds_matter() -> None:
    derm = _derm(7)
    dist = sets.colour_distorted(derm)
    assert all(not np.array_equal(a, b) for a, b in zip(derm, dist.images, strict=True))
    assert any(np.array_equal(255 - a, b) for a, b in zip(derm, dist.images, strict=True))  # inversion is among them
    blur = sets.blurred(derm)
    assert all(b.std() < a.std() / 3 for a, b in zip(derm, blur.images, strict=True))
    assert not _same(sets.noise(5, 0), sets.noise(5, 1))


def test_generated_sets_names_and_parameter_errors() -> None:
    names = [s.name for s in sets.generated_sets(_derm(3), n=7)]
    assert names == list(sets.SET_NAMES)
    assert "blurred" not in [s.name for s in sets.generated_sets(None, n=7)]
    with pytest.raises(ValueError, match=r"The 'n' parameter must be a positive integer. Got 0 instead"):
        sets.noise(0)
