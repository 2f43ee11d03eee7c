"""Deletion/insertion (Petsiuk et al. 2018), random-map baselines, mass in mask and the summary.

Hand-built ``predict_fn``s whose probability is the mean of a known pixel region make every curve
computable by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skinlesion.explain.faithfulness import (
    baseline_image,
    deletion_insertion,
    evaluate_saliency,
    faithfulness_summary,
    mask_fraction,
    mass_in_mask,
    random_baseline,
    random_maps,
)


class RegionPredict:
    """p(class 0) = mean of channel 0 over ``region``; counts calls and batch sizes."""

    def __init__(self, region: tuple[slice, slice] = (slice(None), slice(None))) -> None:
        self.region = region
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        p = x[:, 0][:, self.region[0], self.region[1]].mean(dim=(1, 2)).clamp(0, 1)
        return torch.stack([p, 1 - p], dim=1)


TOP_LEFT = (slice(0, 4), slice(0, 4))  # 16 of the 64 pixels of an 8x8 image


def top_left_map(size: int = 8) -> np.ndarray:
    s = np.zeros((size, size), dtype=np.float32)
    s[: size // 2, : size // 2] = 1.0
    return s


def test_curves_are_exact_and_evaluated_in_one_batch() -> None:
    predict = RegionPredict()
    saliency = np.random.default_rng(0).random((8, 8))
    out = deletion_insertion(predict, torch.ones(3, 8, 8), saliency, 0, steps=4, baseline="zero")
    np.testing.assert_allclose(out["deletion_curve"], [1, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(out["insertion_curve"], [0, 0.25, 0.5, 0.75, 1])
    assert out["deletion_auc"] == pytest.approx(0.5) and out["insertion_auc"] == pytest.approx(0.5)
    assert predict.batches == [8]  # image + baseline once, 2 curves x (steps - 1) inner points, one call


def test_pixels_go_in_decreasing_saliency_order() -> None:
    predict = RegionPredict(TOP_LEFT)
    image = torch.ones(1, 3, 8, 8)
    good = deletion_insertion(predict, image, top_left_map(), 0, steps=4, baseline="zero")
    np.testing.assert_allclose(good["deletion_curve"], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(good["insertion_curve"], [0, 1, 1, 1, 1])
    assert good["deletion_auc"] == pytest.approx(0.125) and good["insertion_auc"] == pytest.approx(0.875)
    bad = deletion_insertion(predict, image, 1 - top_left_map(), 0, steps=4, baseline="zero")
    assert bad["deletion_auc"] == pytest.approx(0.875) and bad["insertion_auc"] == pytest.approx(0.125)
    rnd = random_baseline(predict, image, top_left_map(), 0, steps=4, baseline="zero", n_random=4)
    assert 0.125 < rnd["deletion_auc"] < 0.875 and 0.125 < rnd["insertion_auc"] < 0.875
    assert rnd["deletion_aucs"].shape == (4,) and rnd["deletion_curve"].shape == (5,)
    assert predict.batches[-1] == 2 + 4 * 2 * 3  # all random maps in one batch too (end points once)
    # a coarse map is resized to the image: a 4x4 map with its top-left 2x2 hot gives the same order
    small = deletion_insertion(predict, image, top_left_map(4), 0, steps=4, baseline="zero")
    assert small["deletion_auc"] == pytest.approx(0.125)


def test_ties_are_broken_at_random_not_in_raster_order() -> None:
    predict = RegionPredict((slice(0, 2), slice(None)))  # the first two rows: raster order hits them first
    flat = np.ones((8, 8))
    a = deletion_insertion(predict, torch.ones(3, 8, 8), flat, 0, steps=4, baseline="zero", seed=1)
    b = deletion_insertion(predict, torch.ones(3, 8, 8), flat, 0, steps=4, baseline="zero", seed=1)
    np.testing.assert_array_equal(a["deletion_curve"], b["deletion_curve"])
    assert a["deletion_auc"] > 0.3  # raster order would give 0.125


def test_batch_size_splits_calls_without_changing_curves() -> None:
    predict = RegionPredict(TOP_LEFT)
    image = torch.rand(3, 8, 8)
    one = deletion_insertion(predict, image, top_left_map(), 0, steps=5, baseline="mean")
    split = deletion_insertion(predict, image, top_left_map(), 0, steps=5, baseline="mean", batch_size=5)
    assert predict.batches == [10, 5, 5]
    np.testing.assert_allclose(one["insertion_curve"], split["insertion_curve"])


def test_baseline_images() -> None:
    constant = torch.full((3, 6, 10), 0.3)
    torch.testing.assert_close(baseline_image(constant, "blur", blur_sigma=5.0), constant)
    image = torch.rand(3, 6, 10)
    assert torch.equal(baseline_image(image, "zero"), torch.zeros_like(image))
    torch.testing.assert_close(baseline_image(image, "mean")[:, 2, 3], image.mean(dim=(1, 2)))
    blurred = baseline_image(image, "blur")
    assert blurred.shape == image.shape and blurred.std() < 0.5 * image.std()


def test_random_maps() -> None:
    s = np.arange(36, dtype=np.float32).reshape(6, 6)
    shuffled = random_maps(s, 3, seed=0, kind="shuffle")
    assert shuffled.shape == (3, 6, 6)
    np.testing.assert_array_equal(np.sort(shuffled[1].ravel()), s.ravel())
    np.testing.assert_array_equal(random_maps(s, 2, seed=3), random_maps(s, 2, seed=3))
    smooth = random_maps(np.zeros((64, 64)), 2, kind="smooth")
    noise = random_maps(np.zeros((64, 64)), 2, kind="uniform")
    assert np.abs(np.diff(smooth, axis=-1)).mean() < 0.1 * np.abs(np.diff(noise, axis=-1)).mean()


def test_mass_in_mask() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:32, :16] = 255
    assert mass_in_mask(mask.astype(float), mask) == pytest.approx(1.0)
    assert mass_in_mask(np.ones((16, 16)), mask) == pytest.approx(mask_fraction(mask)) == pytest.approx(0.125)
    hot = np.zeros((16, 16))
    hot[:8, :4] = 1.0  # the mask's region at the map's size (nearest resize)
    assert mass_in_mask(hot, mask) == pytest.approx(1.0)
    assert mass_in_mask(torch.from_numpy(1 - hot), torch.from_numpy(mask)) == pytest.approx(0.0)
    assert mask_fraction(mask, (16, 16)) == pytest.approx(0.125)
    with pytest.warns(RuntimeWarning, match="no mass"):
        assert math.isnan(mass_in_mask(np.zeros((4, 4)), mask))


def test_evaluate_saliency_record() -> None:
    mask = top_left_map().astype(bool)
    record = evaluate_saliency(RegionPredict(TOP_LEFT), torch.ones(3, 8, 8), top_left_map(), 0, mask=mask, steps=4,
                               baseline="zero", n_random=2)
    assert set(record) == {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
                           "mass_in_mask", "mask_fraction"}
    assert record["deletion_auc"] == pytest.approx(0.125)
    assert record["random_deletion_auc"] > 0.2
    assert record["mass_in_mask"] == 1.0 and record["mask_fraction"] == 0.25


def _records(n: int, shift: float, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    rand = rng.uniform(0.4, 0.6, n)
    own = rand - shift + rng.normal(0, 0.02, n)
    return [{"deletion_auc": o, "random_deletion_auc": r, "insertion_auc": r + shift, "random_insertion_auc": r}
            for o, r in zip(own, rand, strict=True)]


def test_summary_paired_difference_ci_and_wilcoxon() -> None:
    out = faithfulness_summary(_records(30, 0.1), n_boot=500)
    d = out["deletion"]
    assert d["n"] == 30 and d["difference"] == pytest.approx(d["mean"] - d["reference"])
    assert d["ci_low"] < d["difference"] < d["ci_high"] < 0 and d["p_value"] < 1e-4
    assert "mass_in_mask" not in out
    null = faithfulness_summary(_records(30, 0.0, seed=1), n_boot=500)["deletion"]
    assert null["ci_low"] < 0 < null["ci_high"] and null["p_value"] > 0.01
    tied = faithfulness_summary(_records(5, 0.0), n_boot=100)["insertion"]
    assert tied["difference"] == 0 and tied["ci_low"] == tied["ci_high"] == 0 and math.isnan(tied["p_value"])


def test_summary_mass_and_cluster_bootstrap() -> None:
    records = _records(12, 0.1)
    for i, r in enumerate(records):
        r.update(mass_in_mask=0.6 + 0.01 * i, mask_fraction=0.2)
    per_image = faithfulness_summary(records, n_boot=500)
    mass = per_image["mass_in_mask"]
    assert mass["mean"] == pytest.approx(0.655) and mass["reference"] == pytest.approx(0.2) and mass["ci_low"] > 0
    clustered = faithfulness_summary(records, groups=["a"] * 6 + ["b"] * 6, n_boot=500)["mass_in_mask"]
    assert clustered["difference"] == pytest.approx(mass["difference"])
    assert clustered["ci_high"] - clustered["ci_low"] > mass["ci_high"] - mass["ci_low"]  # only 2 lesions


def test_errors_name_the_parameter() -> None:
    predict, image, s = RegionPredict(), torch.ones(3, 8, 8), top_left_map()
    with pytest.raises(ValueError, match=r"'baseline' parameter must be one of .*'blur'.*Got 'noise'"):
        deletion_insertion(predict, image, s, 0, baseline="noise")
    with pytest.raises(ValueError, match="'steps' parameter must be a positive integer. Got 0"):
        deletion_insertion(predict, image, s, 0, steps=0)
    with pytest.raises(ValueError, match=r"'class_index' parameter must be in \[0, K\) with K = 2 classes. Got 2"):
        deletion_insertion(predict, image, s, 2)
    with pytest.raises(ValueError, match=r"'saliency' parameter must be a finite 2-D map"):
        deletion_insertion(predict, image, np.ones((1, 8, 8)), 0)
    with pytest.raises(ValueError, match=r"'image' parameter must be a tensor \(C, h, w\)"):
        deletion_insertion(predict, torch.ones(2, 3, 8, 8), s, 0)
    with pytest.raises(ValueError, match=r"predict_fn must return probabilities \(B, K\)"):
        deletion_insertion(lambda x: torch.ones(x.shape[0]), image, s, 0)
    with pytest.raises(ValueError, match="'batch_size' parameter must be None or a positive integer"):
        deletion_insertion(predict, image, s, 0, batch_size=0)
    with pytest.raises(ValueError, match="'n_random' parameter must be a positive integer. Got 0"):
        random_baseline(predict, image, s, 0, n_random=0)
    with pytest.raises(ValueError, match=r"'kind' parameter must be one of .*Got 'gauss'"):
        random_baseline(predict, image, s, 0, kind="gauss")
    with pytest.raises(ValueError, match=r"'mask' parameter must be a 2-D lesion mask"):
        mass_in_mask(s, np.ones((2, 8, 8)))
    with pytest.raises(ValueError, match="'records' parameter must hold at least one"):
        faithfulness_summary([])
    with pytest.raises(ValueError, match="Record 1 lacks 'insertion_auc'"):
        faithfulness_summary([_records(1, 0.1)[0], {"deletion_auc": 0.1, "random_deletion_auc": 0.2}])
    with pytest.raises(ValueError, match=r"'groups' parameter must hold one id per record \(3\)"):
        faithfulness_summary(_records(3, 0.1), groups=[1, 2])
    with pytest.raises(ValueError, match=r"'alpha' parameter must be in \(0, 1\)"):
        faithfulness_summary(_records(3, 0.1), alpha=1.0)
