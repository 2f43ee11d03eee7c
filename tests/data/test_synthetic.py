from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.measure import regionprops

from skinlesion.classes import ISIC2018_CLASSES
from skinlesion.data.datasets import read_ham10000
from skinlesion.data.synthetic import (
    COLOUR_RGB,
    DERMOSCOPIC_COLOURS,
    MIN_COLOUR_FRACTION,
    generate_lesion,
    mask_asymmetry,
    render_lesion,
    sample_spec,
    write_synthetic_dataset,
)


def _clean(label: str, seed: int, **kw):
    spec = sample_spec(label, np.random.default_rng(seed))
    return spec, *render_lesion(spec, seed, noise=0.0, edge_softness=0.0, **kw)


def test_deterministic_by_seed() -> None:
    a = generate_lesion("MEL", 3)
    b = generate_lesion("MEL", 3)
    c = generate_lesion("MEL", 4)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("label", ISIC2018_CLASSES)
def test_truth_matches_the_rendered_mask(label: str) -> None:
    spec, image, mask, truth = _clean(label, 11)
    assert image.shape == (150, 200, 3) and image.dtype == np.uint8
    assert truth.label == label
    assert truth.area_px == mask.sum()
    assert truth.diameter_px == pytest.approx(regionprops(mask.astype(np.uint8))[0].feret_diameter_max)
    assert truth.diameter_mm == pytest.approx(truth.diameter_px * truth.pixel_spacing_mm)


@pytest.mark.parametrize("seed", range(6))
def test_colours_present_are_exactly_the_painted_ones(seed: int) -> None:
    """On clean images each listed colour covers >= MIN_COLOUR_FRACTION of the lesion; others are absent."""
    label = ISIC2018_CLASSES[seed % len(ISIC2018_CLASSES)]
    _, image, mask, truth = _clean(label, 100 + seed)
    ref = np.array([COLOUR_RGB[c] for c in DERMOSCOPIC_COLOURS], float)
    pix = image[mask].astype(float)
    nearest = np.argmin(((pix[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)
    frac = np.bincount(nearest, minlength=len(DERMOSCOPIC_COLOURS)) / len(pix)
    found = {c for c, f in zip(DERMOSCOPIC_COLOURS, frac) if f >= MIN_COLOUR_FRACTION}
    assert found == set(truth.colours)
    assert all(frac[i] == 0 for i, c in enumerate(DERMOSCOPIC_COLOURS) if c not in truth.colours)


def test_asymmetry_grows_with_low_order_harmonics() -> None:
    spec = sample_spec("NV", np.random.default_rng(0))
    values = []
    for amp in (0.0, 0.1, 0.25):
        s = replace(spec, asym=tuple((k, amp, ph) for k, _, ph in spec.asym), border=(), elongation=1.0)
        values.append(render_lesion(s, 0, noise=0, edge_softness=0)[2].asymmetry)
    assert values[0] < 0.03 < values[1] < values[2]


def test_mask_asymmetry_of_symmetric_and_lopsided_shapes() -> None:
    yy, xx = np.mgrid[0:101, 0:101]
    ellipse = ((yy - 50) / 40) ** 2 + ((xx - 50) / 25) ** 2 < 1
    assert max(mask_asymmetry(ellipse)) < 0.02
    lopsided = ellipse & ~((yy < 50) & (xx < 50))
    assert max(mask_asymmetry(lopsided)) > 0.2


def test_hair_does_not_change_the_mask_but_changes_pixels() -> None:
    spec = sample_spec("MEL", np.random.default_rng(5))
    img0, m0, _ = render_lesion(spec, 9, hair=False)
    img1, m1, t1 = render_lesion(spec, 9, hair=True)
    assert np.array_equal(m0, m1) and t1.hair
    assert (np.abs(img0.astype(int) - img1.astype(int)).sum(-1) > 60).mean() > 0.005


def test_class_profiles_differ_in_the_expected_direction() -> None:
    rng = np.random.default_rng(0)
    mel = [render_lesion(sample_spec("MEL", rng), rng, noise=0)[2] for _ in range(12)]
    nv = [render_lesion(sample_spec("NV", rng), rng, noise=0)[2] for _ in range(12)]
    assert np.mean([t.diameter_mm for t in mel]) > np.mean([t.diameter_mm for t in nv])
    assert np.mean([t.asymmetry for t in mel]) > np.mean([t.asymmetry for t in nv])
    assert np.mean([len(t.colours) for t in mel]) > np.mean([len(t.colours) for t in nv])


def test_unknown_class_is_named() -> None:
    with pytest.raises(ValueError, match="no profile for class 'SCC'"):
        sample_spec("SCC", np.random.default_rng(0))


def test_dataset_is_readable_and_grouped_by_lesion(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "syn", n_lesions_per_class=3, size=(48, 64), seed=1)
    table = read_ham10000(root)
    assert table.group_key == "lesion_id" and table.classes == ISIC2018_CLASSES
    per_lesion = table.frame.groupby("lesion_id").size()
    assert len(per_lesion) == 21 and per_lesion.max() > 1
    with open(root / "synthetic_truth.csv") as f:
        truth = list(csv.DictReader(f))
    assert [r["image_id"] for r in truth] == table.frame["image_id"].tolist()
    assert Image.open(root / "images" / f"{truth[0]['image_id']}.jpg").size == (64, 48)
    again = write_synthetic_dataset(tmp_path / "syn2", n_lesions_per_class=3, size=(48, 64), seed=1)
    assert (again / "HAM10000_metadata.csv").read_text() == (root / "HAM10000_metadata.csv").read_text()


def test_classes_are_learnable_but_not_trivial() -> None:
    """Colour histograms + logistic regression beat chance clearly on held-out lesions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    def feats(seed0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for i in range(n):
            for k, c in enumerate(ISIC2018_CLASSES):
                img, _, _ = generate_lesion(c, seed0 + 1000 * k + i, size=(48, 64))
                q = (img // 64).reshape(-1, 3)
                hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(q)
                xs.append(hist)
                ys.append(k)
        return np.array(xs), np.array(ys)

    xtr, ytr = feats(0, 25)
    xte, yte = feats(500, 10)
    clf = LogisticRegression(max_iter=5000, C=1.0).fit(np.sqrt(xtr), ytr)
    bacc = balanced_accuracy_score(yte, clf.predict(np.sqrt(xte)))
    assert 2 / len(ISIC2018_CLASSES) < bacc < 0.98
