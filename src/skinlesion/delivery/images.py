"""Checked image input for predict and serve: every rejected file gets a reason, nothing crashes.

Only 8-bit RGB images are accepted (JPEG, PNG, TIFF, BMP, WebP...): dermoscopy is a colour
modality, and converting CMYK, 16-bit, alpha, palette or grayscale images silently would change what
the model sees. Limits guard against absurd files and decompression bombs: the byte size is checked
before reading, the pixel count from the header before decoding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from skinlesion.errors import SkinLesionError

DEFAULT_MAX_BYTES = 30 * 1024 * 1024  # 30 MiB: far above any dermatoscope JPEG
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP (e.g. 8660 x 5773)
MIN_SIDE = 16
#: Reason codes of :class:`ImageRejected` (stable: they appear in CSVs, HTTP errors and tests).
REASONS = (
    "missing", "unreadable", "empty", "too_large", "not_an_image", "too_many_pixels", "too_small",
    "unsupported_mode", "truncated",
)


class ImageRejected(SkinLesionError):
    """An input that is not a usable 8-bit RGB image; ``reason`` is one of :data:`REASONS`."""

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


def _mode_detail(im: Image.Image) -> str:
    mode = im.mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        return f"has an alpha channel (mode {mode}); expected 8-bit RGB without transparency"
    if mode == "CMYK":
        return "is CMYK (a print colour space); expected 8-bit RGB"
    if mode.startswith("I") or mode == "F" or ";16" in mode:
        return f"has 16/32-bit or float samples (mode {mode}); expected 8-bit RGB"
    if mode in ("L", "1"):
        return f"is grayscale or bilevel (mode {mode}); dermoscopy needs an 8-bit RGB colour image"
    return f"has mode {mode}; expected 8-bit RGB"


def decode_image(data: bytes, *, source: str = "upload", limits: ImageLimits | None = None) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array ``(H, W, 3)`` or raise :class:`ImageRejected`."""
    limits = limits or ImageLimits()
    n = len(data)
    if n == 0:
        raise ImageRejected(source, "empty", "is empty (0 bytes)")
    if n > limits.max_bytes:
        raise ImageRejected(source, "too_large", f"is {n:,} bytes; the limit is {limits.max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > limits.max_pixels:
                raise ImageRejected(
                    source, "too_many_pixels",
                    f"declares {w}x{h} = {w * h:,} pixels; the limit is {limits.max_pixels:,} (possible decompression bomb)",
                )
            if min(w, h) < limits.min_side:
                raise ImageRejected(source, "too_small", f"is {w}x{h} pixels; each side must be at least {limits.min_side}")
            if im.mode != "RGB":
                raise ImageRejected(source, "unsupported_mode", _mode_detail(im))
            im.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected(source, "too_many_pixels", f"is a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageRejected(source, "not_an_image", "is not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL's truncated/corrupt data
        raise ImageRejected(source, "truncated", f"is truncated or corrupt ({e})") from None
    a = np.asarray(im, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageRejected(source, "unsupported_mode", f"decoded to shape {a.shape}; expected (H, W, 3)")
    return a.copy()


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
