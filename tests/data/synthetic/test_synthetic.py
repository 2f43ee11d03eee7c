"""Synthetic lesions: determinism, ground truth measured on the pixels, dataset layout, learnability."""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.measure import regionprops

from skinlesion.classes import ISIC2018_CLASSES, UnknownLabelError
from skinlesion.data.readers import read_ham10000
from skinlesion.data.synthetic import (
    COLOUR_RGB,
    DERMOSCOPIC_COLOURS,
    MIN_COLOUR_FRACTION,
    SHAPE_AXIS_THRESHOLD,
    ColourLayer,
    LesionSpec,
    border_irregularity,
    colour_asymmetry,
    generate_lesion,
    render_lesion,
    sample_spec,
    shape_asymmetry,
    vary_spec,
    write_synthetic_dataset,
)

_REF = np.array([COLOUR_RGB[c] for c in DERMOSCOPIC_COLOURS], dtype=float)


def _nearest_colour_fractions(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Fraction of mask pixels whose nearest reference colour (Euclidean RGB) is each colour."""
    pix = image[mask].astype(float)
    nearest = np.argmin(((pix[:, None, :] - _REF[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(DERMOSCOPIC_COLOURS)) / len(pix)
    return dict(zip(DERMOSCOPIC_COLOURS, counts.tolist()))


def _clean(label: str, seed: int, size: tuple[int, int] = (150, 200)) -> tuple:
    spec = sample_spec(label, np.random.default_rng(seed), size=size)
    return (spec, *render_lesion(spec, seed, size=size, noise=0.0))


def test_deterministic_by_seed() -> None:
    a, b, c = generate_lesion("MEL", 3), generate_lesion("MEL", 3), generate_lesion("MEL", 4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    spec = sample_spec("BCC", np.random.default_rng(7))
    assert spec == sample_spec("BCC", np.random.default_rng(7))
    assert np.array_equal(render_lesion(spec, 1, hair=True)[0], render_lesion(spec, 1, hair=True)[0])


@pytest.mark.parametrize("label", ISIC2018_CLASSES)
def test_truth_is_measured_on_the_mask(label: str) -> None:
    spec, image, mask, truth = _clean(label, 11)
    assert image.shape == (150, 200, 3) and image.dtype == np.uint8 and mask.dtype == bool
    props = regionprops(mask.astype(np.uint8))[0]
    assert truth.label == label
    assert truth.diameter_px == pytest.approx(props.feret_diameter_max)
    assert truth.diameter_mm == pytest.approx(truth.diameter_px * truth.pixel_spacing_mm)
    assert truth.pixel_spacing_mm == pytest.approx(22.0 / 200)
    assert truth.area_px == mask.sum() == props.area
    assert truth.centre == pytest.approx(props.centroid)
    assert truth.asymmetry == pytest.approx(np.mean(shape_asymmetry(mask)))
    assert truth.border_irregularity == pytest.approx(border_irregularity(mask))
    # the lesion lies inside the image, so the measures are those of the whole lesion
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


@pytest.mark.parametrize("size", [(150, 200), (48, 64)])
@pytest.mark.parametrize("label", ISIC2018_CLASSES)
def test_colours_in_truth_are_exactly_those_on_the_pixels(label: str, size: tuple[int, int]) -> None:
    """Clean render: each listed colour is the nearest reference of >= MIN_COLOUR_FRACTION of the
    lesion pixels, every other colour of none."""
    for seed in (1, 2):
        _, image, mask, truth = _clean(label, seed, size)
        frac = _nearest_colour_fractions(image, mask)
        assert truth.colours and set(truth.colours) <= set(DERMOSCOPIC_COLOURS)
        for colour in DERMOSCOPIC_COLOURS:
            if colour in truth.colours:
                assert frac[colour] >= MIN_COLOUR_FRACTION, (colour, frac)
            else:
                assert frac[colour] == 0.0, (colour, frac)


def test_small_colour_regions_are_merged_not_listed() -> None:
    """A layer asked to cover 1% is repainted with the dominant colour and absent from the truth."""
    layers = (ColourLayer("light_brown"), ColourLayer("black", "globules", coverage=0.01, scale_px=3.0))
    spec = LesionSpec("NV", centre=(74.5, 99.5), radius_px=30.0, layers=layers)
    image, mask, truth = render_lesion(spec, 0, noise=0.0)
    assert truth.colours == ("light_brown",)
    assert _nearest_colour_fractions(image, mask)["black"] == 0.0
    kept = replace(spec, layers=(layers[0], replace(layers[1], coverage=0.1)))
    assert render_lesion(kept, 0, noise=0.0)[2].colours == ("light_brown", "black")


def test_asymmetry_grows_with_low_order_harmonics() -> None:
    base = LesionSpec("NV", centre=(74.5, 99.5), radius_px=35.0, elongation=0.8, angle=0.4)
    phases = (0.3, 1.9, 4.0, 5.2)
    values, axes = [], []
    for amp in (0.0, 0.05, 0.12, 0.25):
        spec = replace(base, asym_harmonics=tuple((k, amp, ph) for k, ph in zip((1, 2, 3, 4), phases)))
        truth = render_lesion(spec, 0, noise=0.0)[2]
        values.append(truth.asymmetry)
        axes.append(truth.asymmetric_axes)
    assert values == sorted(values) and values[0] < 0.02 and values[-1] > 3 * SHAPE_AXIS_THRESHOLD
    assert axes[0] == 0 and axes[-1] >= 1


def test_border_irregularity_grows_with_high_order_harmonics() -> None:
    base = LesionSpec("NV", centre=(74.5, 99.5), radius_px=35.0, elongation=0.7, angle=1.0)
    values = [
        render_lesion(replace(base, border_harmonics=((9, amp, 0.5), (14, amp / 2, 2.0))), 0, noise=0.0)[
            2
        ].border_irregularity
        for amp in (0.0, 0.02, 0.05, 0.1)
    ]
    assert values == sorted(values) and values[0] < 0.01 and values[-1] > 0.1


def test_shape_asymmetry_of_known_masks() -> None:
    rect = np.zeros((40, 60), bool)
    rect[10:30, 15:45] = True
    assert shape_asymmetry(rect) == (0.0, 0.0)
    yy, xx = np.mgrid[0:101, 0:101]
    ellipse = ((yy - 50) / 40) ** 2 + ((xx - 50) / 25) ** 2 <= 1
    assert max(shape_asymmetry(ellipse)) < 0.02
    lopsided = ellipse & ~((yy < 50) & (xx < 50))  # one quadrant cut away
    assert min(shape_asymmetry(lopsided)) > 0.1


def test_colour_asymmetry_of_known_label_maps() -> None:
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:50] = True  # major axis horizontal
    labels = np.zeros(mask.shape, np.int64)
    labels[10:20] = 1  # top half one colour, bottom half another
    about_major, about_minor = colour_asymmetry(labels, mask, 6)
    assert about_major == pytest.approx(1.0) and about_minor == pytest.approx(0.0)
    assert colour_asymmetry(np.zeros_like(labels), mask, 6) == (0.0, 0.0)


def test_artefacts_change_pixels_not_the_mask() -> None:
    spec = sample_spec("MEL", np.random.default_rng(5))
    img0, m0, t0 = render_lesion(spec, 9)
    for kw in ({"hair": True}, {"ruler": True}, {"vignette": True}):
        img1, m1, t1 = render_lesion(spec, 9, **kw)
        assert np.array_equal(m0, m1)
        assert getattr(t1, next(iter(kw))) is True
        assert replace(t1, hair=False, ruler=False, vignette=False) == t0
        assert (np.abs(img0.astype(int) - img1.astype(int)).sum(-1) > 60).mean() > 0.005


def test_texture_moves_with_the_lesion() -> None:
    """The spec rotated by 90 degrees renders the rotated lesion, texture included; ``flip``
    mirrors it about its major axis."""
    spec = replace(sample_spec("BKL", np.random.default_rng(3), size=(141, 141)), centre=(70.0, 70.0))
    img0, m0, _ = render_lesion(spec, 0, size=(141, 141), noise=0.0)
    img1, m1, _ = render_lesion(replace(spec, angle=spec.angle + np.pi / 2), 0, size=(141, 141), noise=0.0)
    rotated = np.rot90(m0, k=-1)
    assert (m1 != rotated).sum() <= 2
    both = m1 & rotated
    diff = np.abs(img1.astype(int) - np.rot90(img0, k=-1).astype(int)).max(-1)[both]
    assert (diff > 2).mean() < 0.01
    mirrored = render_lesion(replace(spec, flip=True), 0, size=(141, 141), noise=0.0)[1]
    upright = render_lesion(replace(spec, angle=0.0), 0, size=(141, 141), noise=0.0)[1]
    assert (
        render_lesion(replace(spec, angle=0.0, flip=True), 0, size=(141, 141), noise=0.0)[1] != upright[::-1]
    ).sum() <= 2
    assert not np.array_equal(mirrored, m0)


def test_views_of_one_lesion_stay_the_same_lesion() -> None:
    spec = sample_spec("MEL", np.random.default_rng(2))
    t0 = render_lesion(spec, 0)[2]
    for i in range(4):
        view = vary_spec(spec, np.random.default_rng(i))
        img, mask, t = render_lesion(view, 0)
        assert t.diameter_px == pytest.approx(t0.diameter_px, rel=0.05)
        assert t.area_px == pytest.approx(t0.area_px, rel=0.05)
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_classes_differ_in_the_documented_direction() -> None:
    truths = {c: [_clean(c, s)[3] for s in range(10)] for c in ("MEL", "NV")}
    mel, nv = truths["MEL"], truths["NV"]
    assert min(t.diameter_mm for t in mel) > np.median([t.diameter_mm for t in nv])
    assert np.mean([t.asymmetry for t in mel]) > 2 * np.mean([t.asymmetry for t in nv])
    assert np.mean([t.border_irregularity for t in mel]) > np.mean([t.border_irregularity for t in nv]) + 0.02
    assert all(3 <= len(t.colours) <= 6 and {"blue_grey", "black"} & set(t.colours) for t in mel)
    assert all(len(t.colours) <= 2 for t in nv)


def test_to_dict_is_flat() -> None:
    truth = generate_lesion("DF", 0)[2]
    d = truth.to_dict()
    assert d["colours"] == "|".join(truth.colours)
    assert (d["centre_row"], d["centre_col"]) == truth.centre
    assert all(not isinstance(v, (tuple, list, dict)) for v in d.values())


def test_dataset_layout_and_lesion_grouping(tmp_path: Path) -> None:
    root = write_synthetic_dataset(tmp_path / "syn", n_lesions_per_class=3, size=(48, 64), seed=1, write_masks=True)
    table = read_ham10000(root)
    assert table.group_key == "lesion_id" and table.classes == ISIC2018_CLASSES
    per_lesion = table.frame.groupby("lesion_id").size()
    assert len(per_lesion) == 21 and per_lesion.max() > 1 and per_lesion.min() >= 1
    with open(root / "HAM10000_metadata.csv", newline="") as f:
        meta = list(csv.DictReader(f))
    assert list(meta[0]) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    assert {r["dx"] for r in meta} == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert all(re.fullmatch(r"SYN_\d{7}", r["image_id"]) for r in meta)
    # each lesion has a single diagnosis and patient data
    for lesion in {r["lesion_id"] for r in meta}:
        rows = [(r["dx"], r["age"], r["sex"], r["localization"]) for r in meta if r["lesion_id"] == lesion]
        assert len(set(rows)) == 1
    with open(root / "synthetic_truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert [r["image_id"] for r in truth] == [r["image_id"] for r in meta] == table.frame["image_id"].tolist()
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{r['image_id']}.jpg" for r in meta)
    for row in truth[:5]:
        assert Image.open(root / "images" / f"{row['image_id']}.jpg").size == (64, 48)
        mask = np.asarray(Image.open(root / "masks" / f"{row['image_id']}_segmentation.png")) > 0
        rows, cols = np.nonzero(mask)
        assert [int(row[k]) for k in ("top", "bottom", "left", "right")] == [
            rows.min(),
            rows.max(),
            cols.min(),
            cols.max(),
        ]
        assert int(row["area_px"]) == mask.sum()
        assert float(row["diameter_px"]) == pytest.approx(regionprops(mask.astype(np.uint8))[0].feret_diameter_max)


def test_dataset_is_deterministic_and_replaces_its_previous_images(tmp_path: Path) -> None:
    a = write_synthetic_dataset(
        tmp_path / "a", n_lesions_per_class={"MEL": 2, "nv": 2}, classes=("MEL", "NV"), size=(32, 40), seed=4
    )
    b = write_synthetic_dataset(
        tmp_path / "b", n_lesions_per_class={"MEL": 2, "nv": 2}, classes=("MEL", "NV"), size=(32, 40), seed=4
    )
    for name in ("HAM10000_metadata.csv", "synthetic_truth.csv"):
        assert (a / name).read_text() == (b / name).read_text()
    assert all((a / "images" / p.name).read_bytes() == p.read_bytes() for p in (b / "images").iterdir())
    keep = tmp_path / "a" / "images" / "mine.jpg"
    keep.write_bytes(b"not ours")
    write_synthetic_dataset(a, n_lesions_per_class=1, classes=("DF",), images_per_lesion=(1, 1), size=(32, 40))
    assert sorted(p.name for p in (a / "images").iterdir()) == ["SYN_0000000.jpg", "mine.jpg"]


def test_classes_are_learnable_but_not_trivial() -> None:
    """Colour histograms + logistic regression, trained and tested on different lesions."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    def features(seed0: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for k, label in enumerate(ISIC2018_CLASSES):
            for i in range(n):
                image = generate_lesion(label, seed0 + i, size=(48, 64))[0]
                q = (image // 64).reshape(-1, 3).astype(int)
                xs.append(np.sqrt(np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64) / len(q)))
                ys.append(k)
        return np.array(xs), np.array(ys)

    x_train, y_train = features(0, 30)
    x_test, y_test = features(10_000, 15)
    predicted = LogisticRegression(max_iter=3000, C=10.0).fit(x_train, y_train).predict(x_test)
    bacc = balanced_accuracy_score(y_test, predicted)
    chance = 1.0 / len(ISIC2018_CLASSES)
    assert 2 * chance < bacc < 0.95


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: sample_spec("SCC", np.random.default_rng(0)), ValueError, "no recipe for class 'SCC'"),
        (
            lambda: sample_spec("psoriasis", np.random.default_rng(0)),
            UnknownLabelError,
            "Unknown class label 'psoriasis'",
        ),
        (
            lambda: sample_spec("MEL", np.random.default_rng(0), size=(8, 200)),
            ValueError,
            "'size' parameter must be two integers >= 16",
        ),
        (
            lambda: sample_spec("MEL", np.random.default_rng(0), pixel_spacing_mm=-1.0),
            ValueError,
            "'pixel_spacing_mm' parameter must be a positive",
        ),
        (lambda: ColourLayer("purple"), ValueError, "'colour' of a ColourLayer must be one of"),
        (lambda: ColourLayer("red", "spiral"), ValueError, "'kind' of a ColourLayer must be one of"),
        (
            lambda: ColourLayer("red", "blotch", coverage=0.0),
            ValueError,
            r"'coverage' parameter must be in \(0.0, 1.0\]",
        ),
        (
            lambda: LesionSpec("NV", (10, 10), 5.0, layers=(ColourLayer("red", "blotch"),)),
            ValueError,
            "must start with a ColourLayer of kind 'base'",
        ),
        (
            lambda: LesionSpec("NV", (10, 10), 5.0, asym_harmonics=((7, 0.1, 0.0),)),
            ValueError,
            r"orders in 'asym_harmonics' must be integers in \[1, 4\]",
        ),
        (
            lambda: LesionSpec("NV", (10, 10), 5.0, border_harmonics=((9, 1.5, 0.0),)),
            ValueError,
            r"amplitudes in 'border_harmonics' must be in \[0, 1\)",
        ),
        (
            lambda: LesionSpec("NV", (10, 10), 5.0, elongation=1.5),
            ValueError,
            r"'elongation' parameter must be in \(0.0, 1.0\]",
        ),
        (lambda: render_lesion(LesionSpec("NV", (-50, -50), 5.0), 0), ValueError, "covers 0 pixel"),
        (
            lambda: render_lesion(LesionSpec("NV", (50, 50), 5.0), 0, noise=-1.0),
            ValueError,
            "'noise' parameter must be a non-negative",
        ),
        (
            lambda: render_lesion(LesionSpec("NV", (50, 50), 5.0), 0, brightness=0.0),
            ValueError,
            "'brightness' parameter must be a positive",
        ),
    ],
)
def test_bad_arguments_are_named(call, error, match) -> None:  # noqa: ANN001
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_lesions_per_class": -1}, "must give non-negative integers. Got -1 for 'MEL'"),
        ({"n_lesions_per_class": 0}, "asks for no lesion at all"),
        ({"n_lesions_per_class": {"BCC": 1}, "classes": ("MEL", "NV")}, "names class 'BCC', which is not in 'classes'"),
        ({"n_lesions_per_class": 1, "classes": ("MEL", "mel")}, "'classes' parameter must list distinct classes"),
        ({"n_lesions_per_class": 1, "classes": ("MEL", "SCC")}, "no recipe for class 'SCC'"),
        ({"n_lesions_per_class": 1, "images_per_lesion": (0, 2)}, "'images_per_lesion' parameter must be"),
        ({"n_lesions_per_class": 1, "images_per_lesion": (3, 1)}, "'images_per_lesion' parameter must be"),
        (
            {"n_lesions_per_class": 1, "hair_prob": 1.5},
            r"'hair_prob' parameter must be a probability in \[0, 1\]. Got 1.5",
        ),
    ],
)
def test_bad_dataset_arguments_are_named(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_synthetic_dataset(tmp_path / "syn", **kwargs)
    assert not (tmp_path / "syn" / "HAM10000_metadata.csv").exists()


def test_root_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="'root' parameter must be a folder. Got the file"):
        write_synthetic_dataset(tmp_path / "file", n_lesions_per_class=1)
