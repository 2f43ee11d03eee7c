"""Checked image input for predict and serve: every rejected file gets a reason, nothing crashes.

Every image a clinic produces is accepted and made the 8-bit RGB image the model sees, and what
was done is recorded (:class:`DecodedImage` ``converted_from``, which the record, predictions.csv,
the audit log and the report carry):

* the EXIF orientation is applied (a phone photo stands the way it was taken);
* CMYK goes to sRGB through the embedded ICC profile (Pillow's naive formula when there is none);
  CIELAB through an ICC transform; YCbCr, palette, grayscale and bilevel images to RGB;
* transparency (RGBA screenshots, LA, PA, a palette or colour key with transparency) is composited
  on :data:`ALPHA_BACKGROUND` (white);
* 16-bit samples (and 32-bit integer samples within 0-65535) are scaled to 8-bit
  (``round(v * 255 / 65535)``); floating-point samples are read on Pillow's 0-255 scale (clipped),
  or as 0-1 when every sample lies in [0, 1];
* an animated or multi-page file gives its first frame.

Only the raster formats Pillow both reads and writes itself are opened (:data:`FORMATS`): not
PostScript, which Pillow hands to Ghostscript, nor read-only decoders of rare formats. What is not
a usable image is rejected with a reason (:data:`REASONS`): empty, too large, not an image (also a
format not in :data:`FORMATS`), truncated or corrupt, too small, too many pixels (a decompression
bomb: the pixel count is read from the header before decoding), and samples with no defined
brightness scale (``unsupported_mode``: integers outside 0-65535, NaN or infinite floats). The
byte size is checked before reading.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from skinlesion.errors import SkinLesionError

DEFAULT_MAX_BYTES = 30 * 1024 * 1024  # 30 MiB: far above any dermatoscope JPEG
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP (e.g. 8660 x 5773)
MIN_SIDE = 16
#: Transparent pixels are composited on this colour (screenshots: what a viewer shows).
ALPHA_BACKGROUND = (255, 255, 255)
#: Reason codes of :class:`ImageRejected` (stable: they appear in CSVs, HTTP errors and tests).
REASONS = (
    "missing", "unreadable", "empty", "too_large", "not_an_image", "too_many_pixels", "too_small",
    "unsupported_mode", "truncated",
)
#: The file formats opened (Pillow names; JPEG includes multi-picture MPO): those Pillow reads and
#: writes by itself. Anything else is ``not_an_image``.
FORMATS = (
    "JPEG", "PNG", "GIF", "TIFF", "BMP", "DIB", "WEBP", "JPEG2000", "AVIF", "PPM", "TGA", "ICO", "ICNS", "PCX", "SGI", "QOI", "DDS",
    "BLP", "IM", "MSP", "SPIDER", "XBM",
)
_ORIENTATION_TAG = 0x0112
_ORIENTATIONS = {
    2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom", 5: "transposed",
    6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise",
}
_SIMPLE = {
    "1": "bilevel to RGB", "L": "grayscale to RGB (R = G = B)", "P": "palette to RGB",
    "YCbCr": "YCbCr to RGB", "RGBX": "RGBX to RGB (padding byte dropped)", "HSV": "HSV to RGB",
}
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageRejected(SkinLesionError):
    """An input that is not a usable image; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, source: str, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.source = source
        self.reason = reason
        self.detail = detail
        super().__init__(f"{source}: {detail}")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = MIN_SIDE

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "min_side"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"The '{name}' limit must be a positive integer. Got {v!r} instead.")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``array`` RGB uint8 ``(H, W, 3)`` after orientation, ``converted_from``
    (:class:`skinlesion.records.Conversion`: the file's mode and format and the steps taken, in
    words) or None when the file was 8-bit RGB without an orientation to apply."""

    array: np.ndarray
    converted_from: dict[str, Any] | None

    def conversion_text(self) -> str:
        """``converted_from`` in one line (empty: not converted): ``"CMYK JPEG: step; step"``."""
        return conversion_text(self.converted_from)


def conversion_text(conversion: dict[str, Any] | None) -> str:
    """A :class:`~skinlesion.records.Conversion` in one line, for CSV cells and reports ('' for None)."""
    if not conversion:
        return ""
    head = " ".join(s for s in (conversion.get("mode"), conversion.get("format")) if s)
    return f"{head}: {'; '.join(conversion.get('steps') or [])}"


def _orient(im: Image.Image, steps: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not reject a decodable image
        steps.append("EXIF block unreadable: orientation not applied")
        return im
    if orientation in _ORIENTATIONS:
        im = ImageOps.exif_transpose(im) or im
        steps.append(f"EXIF orientation {orientation} applied ({_ORIENTATIONS[orientation]})")
    return im


def _composite(im: Image.Image, steps: list[str]) -> Image.Image:
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    what = "transparency" if im.mode not in _ALPHA else "alpha channel"
    if alpha.min() == 255:
        steps.append(f"{what} fully opaque: dropped")
        return rgba.convert("RGB")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    steps.append(f"{what} composited on white {ALPHA_BACKGROUND}")
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk(im: Image.Image, steps: list[str]) -> Image.Image:
    from PIL import ImageCms

    icc = im.info.get("icc_profile")
    if icc:
        try:
            out = ImageCms.profileToProfile(
                im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            steps.append("CMYK to sRGB through the embedded ICC profile")
            return out  # type: ignore[return-value]
        except Exception as e:  # noqa: BLE001 - a broken profile: fall back, and say so
            steps.append(f"embedded ICC profile unusable ({type(e).__name__}): CMYK to RGB by Pillow's naive formula")
            return im.convert("RGB")
    steps.append("CMYK to RGB by Pillow's naive formula (no ICC profile embedded)")
    return im.convert("RGB")


def _lab(im: Image.Image, steps: list[str]) -> Image.Image:
    from PIL import ImageCms

    t = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    steps.append("CIELAB to sRGB through an ICC transform")
    return ImageCms.applyTransform(im, t)  # type: ignore[return-value]


def _deep(im: Image.Image, steps: list[str], source: str) -> Image.Image:
    a = np.asarray(im)
    if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
        raise ImageRejected(
            source, "unsupported_mode",
            f"has {a.dtype.itemsize * 8}-bit integer samples from {int(a.min())} to {int(a.max())} (mode {im.mode}); "
            "expected 8-bit or 16-bit samples (0-65535)",
        )
    if "transparency" in im.info:
        steps.append("colour-key transparency ignored")
    steps.append(f"{'16' if im.mode.startswith('I;16') else '32'}-bit grayscale samples scaled to 8-bit (v * 255 / 65535) and to RGB")
    gray = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


def _float(im: Image.Image, steps: list[str], source: str) -> Image.Image:
    a = np.asarray(im, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ImageRejected(source, "unsupported_mode", "has NaN or infinite floating-point samples (mode F); expected finite brightness values")
    if a.size and a.min() >= 0 and a.max() <= 1:
        steps.append("floating-point samples in [0, 1] scaled to 8-bit (v * 255) and to RGB")
        a = a * 255
    else:
        steps.append("floating-point samples clipped to 0-255 (Pillow's scale) and to RGB")
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")


def _to_rgb(im: Image.Image, steps: list[str], source: str) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode == "I" or mode.startswith("I;16"):
        return _deep(im, steps, source)
    if mode in _ALPHA or "transparency" in im.info:
        if mode == "P":
            steps.append("palette to RGB")
        return _composite(im, steps)
    if mode == "CMYK":
        return _cmyk(im, steps)
    if mode == "LAB":
        return _lab(im, steps)
    if mode in _SIMPLE:
        steps.append(_SIMPLE[mode])
        return im.convert("RGB")
    if mode == "F":
        return _float(im, steps, source)
    raise ImageRejected(source, "unsupported_mode", f"has mode {mode}, which has no defined conversion to RGB")


def load_image(data: bytes, *, source: str = "upload", limits: ImageLimits | None = None) -> DecodedImage:
    """Decode image bytes to RGB uint8 and say what was converted (see the module docstring), or
    raise :class:`ImageRejected`."""
    limits = limits or ImageLimits()
    n = len(data)
    if n == 0:
        raise ImageRejected(source, "empty", "is empty (0 bytes)")
    if n > limits.max_bytes:
        raise ImageRejected(source, "too_large", f"is {n:,} bytes; the limit is {limits.max_bytes:,}")
    steps: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # register every plugin, so that FORMATS names loaded ones (idempotent)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = im.size
            if w * h > limits.max_pixels:
                raise ImageRejected(
                    source, "too_many_pixels",
                    f"declares {w}x{h} = {w * h:,} pixels; the limit is {limits.max_pixels:,} (possible decompression bomb)",
                )
            if min(w, h) < limits.min_side:
                raise ImageRejected(source, "too_small", f"is {w}x{h} pixels; each side must be at least {limits.min_side}")
            mode, fmt = im.mode, im.format
            if getattr(im, "is_animated", False):
                im.seek(0)
                steps.append("first frame of an animated or multi-page file")
            im.load()
            im = _to_rgb(_orient(im, steps), steps, source)
            a = np.asarray(im, dtype=np.uint8)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected(source, "too_many_pixels", f"is a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageRejected(source, "not_an_image", f"is not an image file in an accepted format ({', '.join(FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on damaged data (OSError, SyntaxError, struct.error, ...)
        raise ImageRejected(source, "truncated", f"is truncated or corrupt ({type(e).__name__}: {e})") from None
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageRejected(source, "unsupported_mode", f"decoded to shape {a.shape}; expected (H, W, 3)")
    converted = {"mode": mode, "format": fmt, "steps": steps} if steps else None
    return DecodedImage(a.copy(), converted)


def decode_image(data: bytes, *, source: str = "upload", limits: ImageLimits | None = None) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array ``(H, W, 3)`` (see :func:`load_image`) or raise
    :class:`ImageRejected`."""
    return load_image(data, source=source, limits=limits).array


def read_image_bytes(path: str | Path, *, limits: ImageLimits | None = None) -> bytes:
    """A file's bytes after the checks that need no decoding (exists, regular file, byte limit)."""
    limits = limits or ImageLimits()
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageRejected(str(p), "missing", "does not exist") from None
    except OSError as e:
        raise ImageRejected(str(p), "unreadable", f"cannot be read ({e.strerror or e})") from None
    if not p.is_file():
        raise ImageRejected(str(p), "unreadable", "is not a regular file")
    if size > limits.max_bytes:
        raise ImageRejected(str(p), "too_large", f"is {size:,} bytes; the limit is {limits.max_bytes:,}")
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageRejected(str(p), "unreadable", f"cannot be read ({e.strerror or e})") from None


def read_image(path: str | Path, *, limits: ImageLimits | None = None) -> np.ndarray:
    """Read and decode an image file (size checked before reading); raises :class:`ImageRejected`."""
    limits = limits or ImageLimits()
    return decode_image(read_image_bytes(path, limits=limits), source=str(path), limits=limits)
