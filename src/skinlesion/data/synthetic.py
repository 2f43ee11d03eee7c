"""Procedural dermoscopy-like lesions with exact ground truth (shape, border, colours, diameter).

Used by the test suite, by the demo when no real data exists, and to validate automated ABCDE
measurements. A lesion is a star-shaped region ``r(theta) = R(theta) * (1 + sum_k a_k cos(k theta + phi_k))``
around its centre, where ``R`` is an ellipse: low orders ``k = 1..3`` make it asymmetric, high orders
``k = 7..18`` make the border irregular. Its inside is split into regions, one per dermoscopic colour
(a weighted Voronoi partition around seed points), each painted with mild texture.

Ground truth is measured on the rendered mask, never assumed from the parameters:

* ``asymmetry``: for each principal axis through the centroid, the fraction of the lesion area that
  does not overlap its mirror image; the value is the mean over the two axes (0 = symmetric).
  ``asymmetric_axes`` counts axes whose fraction exceeds :data:`ASYMMETRY_AXIS_THRESHOLD`. This is
  shape asymmetry only (the dermoscopic A also looks at colours and structures).
* ``border_irregularity``: ``1 - 4 pi area / perimeter^2`` relative to the smooth ellipse of the
  same spec, clipped to [0, 1] (0 = as smooth as the ellipse).
* ``colours``: exactly the colours painted; each covers at least :data:`MIN_COLOUR_FRACTION` of the
  lesion (smaller regions are repainted with the dominant colour), colours not listed are absent.
* ``diameter_px``: the maximum Feret diameter of the mask; ``diameter_mm`` uses the pixel spacing
  (default: the image width spans :data:`FIELD_OF_VIEW_MM` millimetres, as a 10x dermatoscope
  roughly does on a 200 px wide HAM10000 image).

Classes differ in size, asymmetry, border and colours as the dermoscopy literature describes
(Argenziano et al. 2003; Stolz et al. 1994), with overlapping ranges so the task is not trivial.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import perimeter, regionprops

from skinlesion.classes import ISIC2018_CLASSES, canonical_label

DERMOSCOPIC_COLOURS: tuple[str, ...] = ("white", "red", "light_brown", "dark_brown", "blue_grey", "black")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "white": (236, 232, 226),
    "red": (196, 58, 62),
    "light_brown": (176, 118, 74),
    "dark_brown": (98, 56, 32),
    "blue_grey": (104, 118, 146),
    "black": (28, 24, 24),
}
MIN_COLOUR_FRACTION = 0.03
ASYMMETRY_AXIS_THRESHOLD = 0.08
FIELD_OF_VIEW_MM = 22.0
HAM_DX = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}
_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "neck")


@dataclass(frozen=True)
class LesionTruth:
    """What a lesion really is, measured on its rendered mask (see the module docstring)."""

    label: str
    asymmetry: float
    asymmetric_axes: int
    border_irregularity: float
    colours: tuple[str, ...]
    diameter_px: float
    diameter_mm: float
    pixel_spacing_mm: float
    area_px: int
    centre: tuple[float, float]
    hair: bool
    vignette: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["colours"] = "|".join(self.colours)
        d["centre"] = f"{self.centre[0]:.1f},{self.centre[1]:.1f}"
        return d


@dataclass(frozen=True)
class LesionSpec:
    """Everything that defines one lesion's geometry and colours (sizes in pixels)."""

    label: str
    radius_px: float  # mean radius of the base ellipse
    elongation: float  # ratio of the ellipse axes (>= 1)
    rotation: float  # radians
    centre: tuple[float, float]  # (row, col) as fractions of (H, W)
    asym: tuple[tuple[int, float, float], ...]  # (order k in 1..3, amplitude, phase)
    border: tuple[tuple[int, float, float], ...]  # (order k in 7..18, amplitude, phase)
    colours: tuple[str, ...]  # first = dominant
    colour_seeds: tuple[tuple[float, float, float], ...]  # per colour: (radius frac, angle, weight)
    texture: float
    pixel_spacing_mm: float
    flip: bool = False


# label -> (diameter mm range, asym amplitude range, border amplitude range, required colours, optional colours, n colours range)
_CLASS_PROFILE: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[str, ...], tuple[str, ...], tuple[int, int]]] = {
    "MEL": ((6.0, 12.0), (0.10, 0.28), (0.04, 0.10), ("dark_brown",), ("black", "blue_grey", "light_brown", "red", "white"), (3, 5)),
    "NV": ((3.0, 7.0), (0.0, 0.04), (0.0, 0.015), ("light_brown",), ("dark_brown",), (1, 2)),
    "BCC": ((4.0, 9.0), (0.04, 0.16), (0.015, 0.06), ("red", "blue_grey"), ("white", "light_brown"), (2, 4)),
    "AKIEC": ((4.0, 9.0), (0.04, 0.14), (0.03, 0.08), ("red",), ("white", "light_brown"), (2, 3)),
    "BKL": ((4.0, 10.0), (0.03, 0.16), (0.0, 0.04), ("light_brown",), ("dark_brown", "black", "white"), (2, 3)),
    "DF": ((3.0, 6.0), (0.0, 0.05), (0.0, 0.02), ("light_brown", "white"), ("dark_brown",), (2, 3)),
    "VASC": ((2.5, 6.0), (0.0, 0.08), (0.0, 0.03), ("red",), ("blue_grey", "dark_brown"), (1, 2)),
}


def default_pixel_spacing(size: tuple[int, int]) -> float:
    """Millimetres per pixel when the image width spans :data:`FIELD_OF_VIEW_MM`."""
    return FIELD_OF_VIEW_MM / size[1]


def sample_spec(
    label: str, rng: np.random.Generator, *, size: tuple[int, int] = (150, 200), pixel_spacing_mm: float | None = None
) -> LesionSpec:
    """Draw a lesion of class ``label`` (canonical or dataset name) for an image of ``size`` (H, W)."""
    label = canonical_label(label)
    if label not in _CLASS_PROFILE:
        raise ValueError(f"The synthetic generator has no profile for class {label!r}; it knows {sorted(_CLASS_PROFILE)}.")
    diam, asym, border, required, optional, n_col = _CLASS_PROFILE[label]
    spacing = pixel_spacing_mm or default_pixel_spacing(size)
    d_mm = rng.uniform(*diam)
    max_r = 0.36 * min(size)  # leaves room for harmonics without touching the border
    radius = min(d_mm / spacing / 2.0 / 1.1, max_r)
    n = int(rng.integers(n_col[0], n_col[1] + 1))
    extra = list(rng.permutation(optional))[: max(0, n - len(required))]
    colours = tuple(required) + tuple(str(c) for c in extra)
    asym_amp = rng.uniform(*asym)
    border_amp = rng.uniform(*border)
    asym_terms = tuple((k, asym_amp * rng.uniform(0.5, 1.0), rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3))
    border_terms = tuple(
        (int(k), border_amp * rng.uniform(0.3, 1.0), rng.uniform(0, 2 * np.pi)) for k in rng.choice(np.arange(7, 19), 4, replace=False)
    )
    seeds = [(0.0, 0.0, 1.6)] + [
        (rng.uniform(0.35, 0.85), rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.2)) for _ in colours[1:]
    ]
    if label == "DF":  # central white scar-like patch: white seeded at the centre
        seeds[colours.index("white")], seeds[0] = seeds[0], (0.7, rng.uniform(0, 2 * np.pi), 1.4)
    return LesionSpec(
        label=label,
        radius_px=float(radius),
        elongation=float(rng.uniform(1.0, 1.35 if label in ("MEL", "BKL") else 1.15)),
        rotation=float(rng.uniform(0, np.pi)),
        centre=(float(rng.uniform(0.45, 0.55)), float(rng.uniform(0.45, 0.55))),
        asym=asym_terms,
        border=border_terms,
        colours=colours,
        colour_seeds=tuple(seeds),
        texture=float(rng.uniform(0.03, 0.08)),
        pixel_spacing_mm=float(spacing),
    )


def _radius_field(spec: LesionSpec, theta: np.ndarray, *, harmonics: bool = True) -> np.ndarray:
    a = spec.radius_px * math.sqrt(spec.elongation)
    b = spec.radius_px / math.sqrt(spec.elongation)
    t = theta - spec.rotation
    r = a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
    if harmonics:
        mod = np.ones_like(theta)
        for k, amp, ph in spec.asym + spec.border:
            mod += amp * np.cos(k * theta + ph)
        r = r * np.clip(mod, 0.3, None)
    return r


def _polar(spec: LesionSpec, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float, float]:
    h, w = size
    cy, cx = spec.centre[0] * h, spec.centre[1] * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    if spec.flip:
        dx = -dx
    return np.hypot(dy, dx), np.arctan2(dy, dx), cy, cx


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int = 6) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bilinear upsampling of a coarse random grid)."""
    h, w = size
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    img = Image.fromarray(((coarse + 1) * 127.5).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.float64) / 127.5 - 1


def mask_asymmetry(mask: np.ndarray) -> tuple[float, float]:
    """Non-overlap fraction of the mask with its mirror image about each principal axis (major, minor)."""
    rows, cols = np.nonzero(mask)
    if len(rows) < 3:
        return 0.0, 0.0
    cy, cx = rows.mean(), cols.mean()
    cov = np.cov(np.stack([rows - cy, cols - cx]))
    _, vecs = np.linalg.eigh(cov)
    out = []
    for axis in (vecs[:, 1], vecs[:, 0]):  # mirror about the major axis, then the minor axis
        p = np.stack([rows - cy, cols - cx], 1)
        mirrored = 2 * (p @ axis)[:, None] * axis[None, :] - p
        r = np.rint(mirrored[:, 0] + cy).astype(int)
        c = np.rint(mirrored[:, 1] + cx).astype(int)
        inside = (r >= 0) & (r < mask.shape[0]) & (c >= 0) & (c < mask.shape[1])
        overlap = np.zeros(len(rows), bool)
        overlap[inside] = mask[r[inside], c[inside]]
        out.append(float(1 - overlap.mean()))
    return out[0], out[1]


def _paint_regions(spec: LesionSpec, dist: np.ndarray, theta: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Index into ``spec.colours`` for every lesion pixel (-1 outside); regions below the minimum fraction are merged."""
    rmax = _radius_field(spec, theta)
    rel = dist / np.maximum(rmax, 1e-6)
    best = np.full(mask.shape, np.inf)
    label = np.full(mask.shape, -1, np.int64)
    px, py = rel * np.cos(theta), rel * np.sin(theta)
    for i, (rf, ang, weight) in enumerate(spec.colour_seeds):
        sx, sy = rf * np.cos(ang), rf * np.sin(ang)
        d = np.hypot(px - sx, py - sy) / weight
        better = d < best
        best[better] = d[better]
        label[better] = i
    label[~mask] = -1
    area = mask.sum()
    for i in range(len(spec.colours)):
        if i and (label == i).sum() < MIN_COLOUR_FRACTION * area:
            label[label == i] = 0
    return label


def render_lesion(
    spec: LesionSpec,
    rng: np.random.Generator | int,
    *,
    size: tuple[int, int] = (150, 200),
    hair: bool = False,
    vignette: bool = False,
    noise: float = 4.0,
    edge_softness: float = 1.0,
    brightness: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, LesionTruth]:
    """Render ``spec``: RGB uint8 image (H, W, 3), boolean lesion mask (hair does not change it), truth.

    ``noise=0, edge_softness=0`` gives a clean image whose colours are exactly the reference RGBs
    modulated by the texture.
    """
    rng = np.random.default_rng(rng)
    h, w = size
    dist, theta, cy, cx = _polar(spec, size)
    rmax = _radius_field(spec, theta)
    mask = dist < rmax
    if not mask.any():
        raise ValueError(f"Lesion spec renders to an empty mask at size {size}; radius_px={spec.radius_px}")
    # Skin: a tone with smooth illumination changes.
    tone = np.array([rng.uniform(205, 235), rng.uniform(160, 190), rng.uniform(135, 165)])
    skin = tone[None, None, :] * (1 + 0.04 * _smooth_noise(rng, size))[..., None]
    # Lesion colours.
    regions = _paint_regions(spec, dist, theta, mask)
    present = tuple(c for i, c in enumerate(spec.colours) if (regions == i).any())
    palette = np.array([COLOUR_RGB[c] for c in spec.colours], np.float64)
    texture = 1 + spec.texture * _smooth_noise(rng, size, cells=max(4, int(spec.radius_px / 4)))
    lesion = palette[np.clip(regions, 0, None)] * texture[..., None]
    if edge_softness > 0:
        alpha = np.clip((rmax - dist) / edge_softness + 0.5, 0, 1)
    else:
        alpha = mask.astype(np.float64)
    img = skin * (1 - alpha[..., None]) + lesion * alpha[..., None]
    if hair:
        img = _draw_hair(img, rng)
    if vignette:
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
        img = img * np.clip(1 - (r - 1.05) / 0.2, 0.03, 1)[..., None]
    img = img * brightness
    if noise > 0:
        img = img + rng.normal(0, noise, img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    truth = measure_truth(spec, mask, present, hair=hair, vignette=vignette)
    return image, mask, truth


def _draw_hair(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark curved strands (quadratic Bezier curves), 1-2 px wide, over lesion and skin."""
    h, w = img.shape[:2]
    out = img.copy()
    colour = np.array([rng.uniform(25, 60), rng.uniform(18, 40), rng.uniform(12, 30)])
    t = np.linspace(0, 1, 4 * (h + w))[:, None]
    for _ in range(int(rng.integers(3, 12))):
        p0, p1, p2 = (rng.uniform([0, 0], [h, w]) for _ in range(3))
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        width = int(rng.integers(1, 3))
        for dr in range(width):
            r = np.clip(np.rint(pts[:, 0]).astype(int) + dr, 0, h - 1)
            c = np.clip(np.rint(pts[:, 1]).astype(int), 0, w - 1)
            out[r, c] = colour
    return out


def measure_truth(spec: LesionSpec, mask: np.ndarray, colours: tuple[str, ...], *, hair: bool, vignette: bool) -> LesionTruth:
    """Ground truth measured on the rendered mask (see the module docstring for definitions)."""
    props = regionprops(mask.astype(np.uint8))[0]
    a_major, a_minor = mask_asymmetry(mask)
    dist, theta, _, _ = _polar(spec, mask.shape)
    smooth = dist < _radius_field(spec, theta, harmonics=False)
    compact = 4 * np.pi * mask.sum() / max(perimeter(mask), 1e-6) ** 2
    compact_smooth = 4 * np.pi * smooth.sum() / max(perimeter(smooth), 1e-6) ** 2
    border = float(np.clip(1 - compact / compact_smooth, 0, 1))
    diameter_px = float(props.feret_diameter_max)
    return LesionTruth(
        label=spec.label,
        asymmetry=(a_major + a_minor) / 2,
        asymmetric_axes=int(a_major > ASYMMETRY_AXIS_THRESHOLD) + int(a_minor > ASYMMETRY_AXIS_THRESHOLD),
        border_irregularity=border,
        colours=tuple(c for c in DERMOSCOPIC_COLOURS if c in colours),
        diameter_px=diameter_px,
        diameter_mm=diameter_px * spec.pixel_spacing_mm,
        pixel_spacing_mm=spec.pixel_spacing_mm,
        area_px=int(mask.sum()),
        centre=(float(props.centroid[0]), float(props.centroid[1])),
        hair=hair,
        vignette=vignette,
    )


def generate_lesion(
    label: str, seed: int, *, size: tuple[int, int] = (150, 200), hair: bool | None = None, vignette: bool | None = None
) -> tuple[np.ndarray, np.ndarray, LesionTruth]:
    """One lesion of class ``label``, deterministic from ``seed``; hair/vignette random (30%) when None."""
    rng = np.random.default_rng(seed)
    spec = sample_spec(label, rng, size=size)
    hair = bool(rng.random() < 0.3) if hair is None else hair
    vignette = bool(rng.random() < 0.3) if vignette is None else vignette
    return render_lesion(spec, rng, size=size, hair=hair, vignette=vignette)


def write_synthetic_dataset(
    root: str | Path,
    *,
    n_lesions_per_class: dict[str, int] | int,
    classes: tuple[str, ...] = ISIC2018_CLASSES,
    images_per_lesion: tuple[int, int] = (1, 3),
    size: tuple[int, int] = (150, 200),
    seed: int = 0,
    hair_prob: float = 0.3,
    vignette_prob: float = 0.3,
) -> Path:
    """Write a HAM10000-style dataset: ``HAM10000_metadata.csv``, ``images/SYN_*.jpg`` and
    ``synthetic_truth.csv`` (truth + bounding box per image). Several images of one lesion are
    variations (rotation, mirror, shift, brightness) of the same lesion. Deterministic from ``seed``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    counts = n_lesions_per_class if isinstance(n_lesions_per_class, dict) else {c: n_lesions_per_class for c in classes}
    rng = np.random.default_rng(seed)
    meta_rows, truth_rows = [], []
    n_img = 0
    for ci, cls in enumerate(classes):
        cls = canonical_label(cls)
        for li in range(counts.get(cls, 0)):
            lesion_id = f"SYN_L{ci:01d}{li:05d}"
            base = sample_spec(cls, rng, size=size)
            age, sex, site = float(5 * rng.integers(4, 18)), str(rng.choice(["male", "female"])), str(rng.choice(_SITES))
            for _ in range(int(rng.integers(images_per_lesion[0], images_per_lesion[1] + 1))):
                n_img += 1
                spec = replace(
                    base,
                    rotation=base.rotation + float(rng.uniform(0, 2 * np.pi)),
                    centre=(base.centre[0] + rng.uniform(-0.04, 0.04), base.centre[1] + rng.uniform(-0.04, 0.04)),
                    flip=bool(rng.random() < 0.5),
                )
                hair, vig = bool(rng.random() < hair_prob), bool(rng.random() < vignette_prob)
                image, mask, truth = render_lesion(spec, rng, size=size, hair=hair, vignette=vig, brightness=rng.uniform(0.9, 1.1))
                image_id = f"SYN_{n_img:07d}"
                Image.fromarray(image).save(root / "images" / f"{image_id}.jpg", quality=95)
                rows, cols = np.nonzero(mask)
                meta_rows.append([lesion_id, image_id, HAM_DX[cls], "synthetic", age, sex, site])
                truth_rows.append(
                    {"image_id": image_id, "lesion_id": lesion_id, **truth.to_dict(),
                     "top": int(rows.min()), "bottom": int(rows.max()), "left": int(cols.min()), "right": int(cols.max())}
                )
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        wr.writerows(meta_rows)
    if truth_rows:
        with open(root / "synthetic_truth.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(truth_rows[0]))
            wr.writeheader()
            wr.writerows(truth_rows)
    return root
