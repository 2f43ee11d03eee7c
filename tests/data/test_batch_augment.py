"""Whole-batch tensor augmentation and the in-memory image cache (the fast training path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skinlesion.data.batch_augment import affine_matrices, augment_batch, eval_batch

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch(n: int = 4, h: int = 30, w: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("level", ["light", "medium", "strong"])
def test_augment_gives_normalised_batches_at_the_input_size(level: str) -> None:
    x = augment_batch(_batch(), (24, 32), MEAN, STD, level, generator=torch.Generator().manual_seed(1))
    assert x.shape == (4, 3, 24, 32) and x.dtype == torch.float32
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    per_channel = x.transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()


def test_augment_is_reproducible_with_a_generator_and_varies_without_one() -> None:
    a = augment_batch(_batch(), (24, 32), MEAN, STD, "medium", generator=torch.Generator().manual_seed(3))
    b = augment_batch(_batch(), (24, 32), MEAN, STD, "medium", generator=torch.Generator().manual_seed(3))
    c = augment_batch(_batch(), (24, 32), MEAN, STD, "medium", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_level_none_is_the_eval_resize() -> None:
    x = _batch()
    assert torch.equal(augment_batch(x, (24, 32), MEAN, STD, "none"), eval_batch(x, (24, 32), MEAN, STD))


def test_eval_batch_is_an_antialiased_whole_image_resize() -> None:
    x = _batch()
    want = F.interpolate(x.float() / 255, size=(15, 20), mode="bilinear", antialias=True, align_corners=False)
    got = eval_batch(x, (15, 20), MEAN, STD) * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(got, want.clamp(0, 1), atol=1e-5, rtol=0)


def test_light_geometry_is_flips_only() -> None:
    m = affine_matrices(64, "light", 4 / 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m[:, :, 2], torch.zeros(64, 2))  # no translation
    lin = m[:, :, :2]
    assert torch.equal(lin.abs(), torch.eye(2).expand(64, 2, 2))  # +-1 on the diagonal
    assert {(float(a), float(b)) for a, b in lin.diagonal(dim1=1, dim2=2)} == {(1, 1), (1, -1), (-1, 1), (-1, -1)}


def test_rotations_are_rotations_of_the_picture_not_of_the_normalised_square() -> None:
    """In picture coordinates (x scaled by the aspect ratio) the linear part without crop and flips is
    a rotation times shear over zoom: its determinant is 1 / zoom^2 > 0 and, for zero shear, its
    columns are orthogonal."""
    aspect = 4 / 3
    g = torch.Generator().manual_seed(5)
    m = affine_matrices(256, "medium", aspect, generator=g)[:, :, :2]
    d = torch.diag(torch.tensor([aspect, 1.0]))
    pic = d @ m @ torch.linalg.inv(d)
    det = torch.linalg.det(pic).abs()
    # crop scales area by s in [0.6, 1]; zoom by [0.9, 1.1]^-2: the determinant stays in that range
    assert (det > 0.6 / 1.1**2 - 1e-4).all() and (det <= 1 / 0.9**2 + 1e-4).all()


def test_bad_batches_are_refused_with_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, H, W\) tensor"):
        augment_batch(torch.zeros(2, 3, 8, 8), (8, 8), MEAN, STD)
    with pytest.raises(ValueError, match="augment.level"):
        augment_batch(_batch(), (8, 8), MEAN, STD, "extreme")
    with pytest.raises(ValueError, match=r"uint8 \(N, 3, H, W\) tensor"):
        eval_batch(torch.zeros(2, 8, 8, 3, dtype=torch.uint8), (8, 8), MEAN, STD)


def test_image_cache_decodes_every_row_in_table_order(tmp_path) -> None:
    import cv2

    from skinlesion.data.readers import load_dataset
    from skinlesion.data.image_cache import CachedLesionDataset, cache_size, decode_images
    from skinlesion.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, n_lesions_per_class=2, seed=0)
    table = load_dataset("ham10000", tmp_path)
    size = cache_size((24, 32))
    assert size == (30, 40)
    images = decode_images(table, size, threads=2)
    assert images.shape == (len(table), 3, 30, 40) and images.dtype == torch.uint8
    want = cv2.resize(table.load_image(3), (40, 30), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(images[3].permute(1, 2, 0).numpy(), want)
    ds = CachedLesionDataset(table, images, metadata=np.ones((len(table), 2)))
    x, y, row, meta = ds[3]
    assert torch.equal(x, images[3]) and int(y) == int(table.labels()[3]) and int(row) == 3 and meta.shape == (2,)
    with pytest.raises(ValueError, match=f"N = {len(table)} rows"):
        CachedLesionDataset(table, images[:2])


def test_keep_freed_memory_applies_once() -> None:
    import platform

    from skinlesion._malloc import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True
