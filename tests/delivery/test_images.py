"""Checked image decoding: each kind of bad input is rejected with its own reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinlesion.delivery.images import ImageLimits, ImageRejected, decode_image, read_image


def _encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _rgb(h: int = 40, w: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_and_jpeg_decode_exactly() -> None:
    a = _rgb()
    np.testing.assert_array_equal(decode_image(_encode(Image.fromarray(a))), a)
    j = decode_image(_encode(Image.fromarray(a), "JPEG"))
    assert j.shape == a.shape and j.dtype == np.uint8


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"patient notes, not an image\n" * 3, "not_an_image"),
        (_encode(Image.fromarray(_rgb()).convert("CMYK"), "JPEG"), "unsupported_mode"),
        (_encode(Image.fromarray(_rgb()).convert("RGBA")), "unsupported_mode"),
        (_encode(Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16))), "unsupported_mode"),
        (_encode(Image.fromarray(_rgb()).convert("L")), "unsupported_mode"),
        (_encode(Image.fromarray(_rgb(8, 50))), "too_small"),
        (_encode(Image.fromarray(_rgb(400, 400)), "JPEG")[:600], "truncated"),
    ],
    ids=["empty", "text", "cmyk", "rgba", "16bit", "gray", "tiny", "truncated"],
)
def test_bad_inputs_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as e:
        decode_image(data, source="case.jpg")
    assert e.value.reason == reason
    assert str(e.value).startswith("case.jpg: ")


def test_mode_messages_say_what_was_expected() -> None:
    with pytest.raises(ImageRejected, match="alpha channel.*8-bit RGB"):
        decode_image(_encode(Image.fromarray(_rgb()).convert("RGBA")))
    with pytest.raises(ImageRejected, match="CMYK"):
        decode_image(_encode(Image.fromarray(_rgb()).convert("CMYK"), "JPEG"))


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    # A 2000x2000 solid PNG compresses to a few KB: a small file that would decode to 4 MP.
    data = _encode(Image.new("RGB", (2000, 2000), (120, 80, 60)))
    assert len(data) < 50_000
    with pytest.raises(ImageRejected) as e:
        decode_image(data, limits=ImageLimits(max_pixels=1_000_000))
    assert e.value.reason == "too_many_pixels" and "4,000,000" in str(e.value)
    assert decode_image(data).shape == (2000, 2000, 3)  # within the default limit


def test_byte_limit(tmp_path: Path) -> None:
    data = _encode(Image.fromarray(_rgb(100, 100)))
    with pytest.raises(ImageRejected) as e:
        decode_image(data, limits=ImageLimits(max_bytes=len(data) - 1))
    assert e.value.reason == "too_large"
    f = tmp_path / "big.png"
    f.write_bytes(data)
    with pytest.raises(ImageRejected) as e:
        read_image(f, limits=ImageLimits(max_bytes=100))
    assert e.value.reason == "too_large" and str(f) in str(e.value)


def test_read_image_names_missing_and_non_files(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path / "nope.jpg")
    assert e.value.reason == "missing" and "nope.jpg" in str(e.value)
    with pytest.raises(ImageRejected) as e:
        read_image(tmp_path)
    assert e.value.reason == "unreadable"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)
