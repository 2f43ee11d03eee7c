"""Images that are clearly not dermoscopy, to measure an out-of-distribution gate on. Nothing is downloaded.

Every set is a list of RGB uint8 arrays ``(H, W, 3)`` with a name, deterministic for a seed:

* ``synthetic_lesions``: procedural lesions (:func:`skinlesion.data.synthetic.write_synthetic_dataset`,
  written to a temporary folder and read back).
* ``photographs``: everyday photographs bundled with scikit-image (cat, astronaut, coffee, rocket,
  motorcycles, camera man, coins, moon, textures, Hubble deep field), each whole and as random 4:3 crops.
* ``documents``: text rendered with Pillow's bundled font on white/paper backgrounds (letters,
  forms, close-ups, several font sizes), plus scikit-image's two scanned text images.
* ``colour_distorted`` / ``blurred``: real dermoscopy images passed in (e.g. HAM10000 test images,
  kept in memory) with hue rotations, channel swaps and inversion / a strong Gaussian blur.
* ``uniform``: flat images (skin tones, white, black, grey, saturated colours) and smooth gradients.
* ``noise``: Gaussian, uniform, salt-and-pepper and smooth (upsampled) colour noise.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from skinlesion._params import positive_int

#: HAM10000's image size (H, W); generated images use it unless they come from elsewhere.
SIZE = (150, 200)

#: scikit-image's bundled everyday photographs (shipped in the wheel; read from disk, never fetched).
PHOTOGRAPHS = (
    "chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
    "camera.png", "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg",
)
SCANNED_TEXT = ("page.png", "text.png")
SKIN_TONES = ((241, 194, 167), (224, 172, 138), (198, 134, 103), (161, 102, 72), (112, 71, 50), (232, 190, 172))
SET_NAMES = ("synthetic_lesions", "photographs", "documents", "colour_distorted", "blurred", "uniform", "noise")

_WORDS = (
    "patient referral letter dear doctor thank you for seeing this lesion on the back history of "
    "itching for three months no bleeding family history of melanoma examination shows a pigmented "
    "macule with irregular border please advise regarding excision kind regards clinic appointment "
    "date signature report page invoice total amount payment address street city phone number"
).split()


@dataclass
class OODSet:
    """A named list of RGB uint8 images and what they are (``kinds``: per image its variant, where the set has several)."""

    name: str
    images: list[np.ndarray]
    description: str
    kinds: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3]).astype(np.uint8)


def _resize(a: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def _crop43(a: np.ndarray, rng: np.random.Generator, frac: float) -> np.ndarray:
    """A random crop with aspect 4:3 (W:H) covering ``frac`` of the largest such crop."""
    h, w = a.shape[:2]
    ch = min(h, int(w * 3 / 4))
    ch, cw = max(8, int(ch * frac)), max(8, int(ch * frac * 4 / 3))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return a[top : top + ch, left : left + cw]


def synthetic_lesions(n_per_class: int = 4, seed: int = 0) -> OODSet:
    """One image per procedural lesion, ``n_per_class`` lesions of each of the 7 classes."""
    from skinlesion.data.synthetic import write_synthetic_dataset

    positive_int("n_per_class", n_per_class)
    with tempfile.TemporaryDirectory(prefix="skinlesion-ood-") as tmp:
        root = write_synthetic_dataset(Path(tmp), n_lesions_per_class=n_per_class, images_per_lesion=(1, 1), seed=seed)
        images = [_rgb(np.asarray(Image.open(p).convert("RGB"))) for p in sorted((root / "images").glob("*.jpg"))]
    return OODSet("synthetic_lesions", images, f"procedural lesions, {n_per_class} per class, seed {seed}")


def photographs(crops_per_image: int = 2, seed: int = 0) -> OODSet:
    """scikit-image's bundled photographs: each whole (resized to 4:3) and as ``crops_per_image`` random crops."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    rng = np.random.default_rng([seed, 1])
    images, used = [], []
    for name in PHOTOGRAPHS:
        if not (folder / name).is_file():  # not shipped in this scikit-image: left out, never fetched
            continue
        a = _rgb(np.asarray(Image.open(folder / name).convert("RGB")))
        used.append(name.split(".")[0])
        images.append(_resize(_crop43(a, rng, 1.0)))
        images += [_resize(_crop43(a, rng, float(rng.uniform(0.35, 0.8)))) for _ in range(crops_per_image)]
    return OODSet("photographs", images, f"scikit-image photographs {used}, whole and {crops_per_image} crops each")


def _text_page(rng: np.random.Generator, size: tuple[int, int], font_size: int, paper: tuple[int, int, int], ink: tuple[int, int, int]) -> np.ndarray:
    h, w = size
    im = Image.new("RGB", (w, h), paper)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    y, margin = int(rng.integers(4, 3 * font_size)), int(rng.integers(4, 2 * font_size))
    if rng.random() < 0.3:  # a form: ruled boxes
        for yy in range(y, h - font_size, 3 * font_size):
            draw.rectangle([margin, yy, w - margin, yy + 2 * font_size], outline=ink, width=1)
    while y < h - font_size:
        words = rng.choice(_WORDS, size=int(rng.integers(4, 14)))
        line = " ".join(words).capitalize() + ("." if rng.random() < 0.5 else "")
        draw.text((margin, y), line, fill=ink, font=font)
        y += int(font_size * rng.uniform(1.2, 1.8)) + (font_size if rng.random() < 0.15 else 0)
    return np.asarray(im)


def documents(n: int = 24, seed: int = 0) -> OODSet:
    """``n`` rendered text images (pages and close-ups, font sizes 8-40 px) plus the two scanned text
    images of scikit-image when present."""
    import skimage.data

    positive_int("n", n)
    rng = np.random.default_rng([seed, 2])
    papers = ((255, 255, 255), (250, 246, 232), (236, 236, 236), (245, 240, 220))
    inks = ((0, 0, 0), (20, 20, 90), (60, 60, 60))
    images = []
    for i in range(n):
        close_up = i % 2 == 1
        page = (300, 400) if close_up else (900, 1200)
        font_size = int(rng.integers(14, 41)) if close_up else int(rng.integers(8, 20)) * 3
        a = _text_page(rng, page, font_size, papers[i % len(papers)], inks[i % len(inks)])
        images.append(_resize(a))
    folder = Path(skimage.data.__file__).parent
    images += [_resize(_crop43(_rgb(np.asarray(Image.open(folder / f).convert("RGB"))), rng, 1.0)) for f in SCANNED_TEXT if (folder / f).is_file()]
    return OODSet("documents", images, f"{n} rendered text pages/close-ups (Pillow's font) + scanned text of scikit-image")


def _hue_rotate(a: np.ndarray, degrees: int) -> np.ndarray:
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV)  # OpenCV hue is 0..179 (2 degrees per unit)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + degrees // 2) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


#: The colour distortions, applied in turn.
DISTORTIONS = ("hue+90", "hue+180", "hue+270", "channels_bgr", "channels_gbr", "channels_brg", "invert")


def colour_distorted(images: Sequence[np.ndarray], seed: int = 0) -> OODSet:
    """Each image with one heavy colour change, cycling through :data:`DISTORTIONS` (start drawn with ``seed``)."""
    start = int(np.random.default_rng([seed, 3]).integers(len(DISTORTIONS)))
    out, kinds = [], []
    for i, im in enumerate(images):
        a, kind = _rgb(im), DISTORTIONS[(start + i) % len(DISTORTIONS)]
        kinds.append(kind)
        if kind.startswith("hue"):
            out.append(_hue_rotate(a, int(kind[4:])))
        elif kind == "invert":
            out.append(255 - a)
        else:
            order = {"channels_bgr": [2, 1, 0], "channels_gbr": [1, 2, 0], "channels_brg": [2, 0, 1]}[kind]
            out.append(np.ascontiguousarray(a[:, :, order]))
    return OODSet("colour_distorted", out, f"dermoscopy with {list(DISTORTIONS)} in turn", kinds)


def blurred(images: Sequence[np.ndarray], seed: int = 0, sigma: tuple[float, float] = (8.0, 16.0)) -> OODSet:
    """Each image blurred with a Gaussian of sigma drawn in ``sigma`` (pixels at 200 x 150: 4-8% of the width)."""
    rng = np.random.default_rng([seed, 4])
    out = []
    for im in images:
        a = _rgb(im)
        s = float(rng.uniform(*sigma)) * a.shape[1] / SIZE[1]
        out.append(cv2.GaussianBlur(a, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT_101))
    return OODSet("blurred", out, f"dermoscopy with a Gaussian blur, sigma {sigma} px at width {SIZE[1]}")


def uniform(seed: int = 0) -> OODSet:
    """Flat skin tones, flat white/black/greys/saturated colours, and smooth two-colour gradients."""
    rng = np.random.default_rng([seed, 5])
    h, w = SIZE
    colours = list(SKIN_TONES) + [(255, 255, 255), (0, 0, 0), (128, 128, 128), (200, 200, 200), (255, 0, 0), (0, 128, 0), (30, 60, 200), (140, 90, 60)]
    images = [np.full((h, w, 3), c, np.uint8) for c in colours]
    for i in range(8):
        c0, c1 = np.asarray(SKIN_TONES[i % len(SKIN_TONES)], float), rng.integers(0, 256, 3).astype(float)
        t = np.linspace(0, 1, w if i % 2 == 0 else h)
        ramp = c0 + (c1 - c0) * t[:, None]
        a = np.broadcast_to(ramp[None], (h, w, 3)) if i % 2 == 0 else np.broadcast_to(ramp[:, None], (h, w, 3))
        images.append(np.ascontiguousarray(a).round().astype(np.uint8))
    return OODSet("uniform", images, "flat skin tones and colours, smooth gradients")


def noise(n: int = 24, seed: int = 0) -> OODSet:
    """``n`` noise images: Gaussian (colour and grey), uniform, salt-and-pepper, smooth upsampled colour noise."""
    positive_int("n", n)
    rng = np.random.default_rng([seed, 6])
    h, w = SIZE
    images = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            a = rng.normal(128, 50, (h, w, 3))
        elif kind == 1:
            a = np.repeat(rng.normal(128, 60, (h, w, 1)), 3, axis=2)
        elif kind == 2:
            a = rng.uniform(0, 256, (h, w, 3))
        elif kind == 3:
            a = np.where(rng.random((h, w, 1)) < 0.5, 0.0, 255.0).repeat(3, axis=2)
        else:
            cells = int(rng.integers(3, 12))
            a = cv2.resize(rng.uniform(0, 256, (cells, cells, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        images.append(np.clip(a, 0, 255).round().astype(np.uint8))
    return OODSet("noise", images, "Gaussian, grey Gaussian, uniform, salt-and-pepper and smooth colour noise")


def generated_sets(dermoscopy: Sequence[np.ndarray] | None = None, *, n: int = 24, seed: int = 0) -> list[OODSet]:
    """All sets of :data:`SET_NAMES`; ``colour_distorted`` and ``blurred`` only when ``dermoscopy``
    images are given (real in-distribution images, distorted in memory)."""
    sets = [synthetic_lesions(max(1, -(-n // 7)), seed), photographs(2, seed), documents(n, seed)]
    if dermoscopy is not None and len(dermoscopy):
        sets += [colour_distorted(dermoscopy, seed), blurred(dermoscopy, seed)]
    return sets + [uniform(seed), noise(n, seed)]


__all__ = [
    "DISTORTIONS",
    "OODSet",
    "PHOTOGRAPHS",
    "SET_NAMES",
    "blurred",
    "colour_distorted",
    "documents",
    "generated_sets",
    "noise",
    "photographs",
    "synthetic_lesions",
    "uniform",
]
