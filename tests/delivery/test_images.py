"""Checked image decoding: each kind of bad input is rejected with its own reason."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skinlesion.delivery.images import ImageLimits, ImageRejected, decode_image, load_image, read_image


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


def _tiff(im: Image.Image) -> bytes:
    return _encode(im, "TIFF")


def _left_half_transparent(mode: str) -> Image.Image:
    """The _rgb() image as ``mode`` (RGBA, LA or PA) with its left half fully transparent."""
    im = Image.fromarray(_rgb()).convert({"RGBA": "RGB", "LA": "L", "PA": "P"}[mode])
    alpha = np.full((40, 50), 255, np.uint8)
    alpha[:, :25] = 0
    im = im.convert(mode)
    im.putalpha(Image.fromarray(alpha))
    return im


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize(
    ("data", "mode", "step", "expected"),
    [
        (_encode(Image.fromarray(_rgb()).convert("L")), "L", "grayscale to RGB", np.repeat(np.asarray(Image.fromarray(_rgb()).convert("L"))[..., None], 3, 2)),
        (_encode(Image.fromarray(_rgb()).convert("1"), "BMP"), "1", "bilevel to RGB", np.asarray(Image.fromarray(_rgb()).convert("1").convert("RGB"))),
        (_encode(Image.fromarray(_rgb()).convert("P"), "GIF"), "P", "palette to RGB", np.asarray(Image.fromarray(_rgb()).convert("P").convert("RGB"))),
        (_encode(Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16))), "I;16", "16-bit grayscale samples scaled to 8-bit", np.full((40, 50, 3), 156, np.uint8)),
        (_tiff(Image.fromarray(np.full((40, 50), 65535, dtype=np.int32))), "I", "32-bit grayscale samples scaled", np.full((40, 50, 3), 255, np.uint8)),
        (_tiff(Image.fromarray(_rgb()).convert("YCbCr")), "YCbCr", "YCbCr to RGB", np.asarray(Image.fromarray(_rgb()).convert("YCbCr").convert("RGB"))),
        (_encode(Image.fromarray(_rgb()).convert("CMYK"), "JPEG"), "CMYK", "naive formula (no ICC profile embedded)", None),
        (_encode(Image.fromarray(_rgb()).convert("RGBA")), "RGBA", "alpha channel fully opaque: dropped", _rgb()),
        (_tiff(Image.fromarray(np.full((40, 50), 300.4, np.float32), "F")), "F", "clipped to 0-255", np.full((40, 50, 3), 255, np.uint8)),
        (_encode(Image.fromarray(np.full((40, 50), 0.5, np.float32), "F"), "SPIDER"), "F", "in [0, 1] scaled", np.full((40, 50, 3), 128, np.uint8)),
        (_encode(Image.fromarray(_rgb()).convert("L"), "TGA"), "L", "grayscale to RGB", None),
    ],
    ids=["gray", "bilevel", "palette-gif", "16bit-png", "32bit-tiff", "ycbcr-tiff", "cmyk-jpeg", "opaque-rgba", "float-tiff", "float-01-spider", "tga"],
)
def test_valid_images_of_other_modes_are_converted_and_say_how(data: bytes, mode: str, step: str, expected: np.ndarray | None) -> None:
    decoded = load_image(data, source="case")
    assert decoded.array.dtype == np.uint8 and decoded.array.shape == (40, 50, 3)
    if expected is not None:
        np.testing.assert_array_equal(decoded.array, expected)
    conv = decoded.converted_from
    assert conv is not None and conv["mode"] == mode and any(step in s for s in conv["steps"]), conv
    assert decoded.conversion_text().startswith(f"{mode} {conv['format']}: ")


def test_an_upright_8bit_rgb_file_is_not_converted() -> None:
    decoded = load_image(_encode(Image.fromarray(_rgb())))
    assert decoded.converted_from is None and decoded.conversion_text() == ""
    np.testing.assert_array_equal(decoded.array, _rgb())


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparency_is_composited_on_white(mode: str) -> None:
    im = _left_half_transparent(mode)
    decoded = load_image(_encode(im, "TIFF" if mode == "PA" else "PNG"))
    a = decoded.array
    assert (a[:, :25] == 255).all()  # the transparent half shows the stated background
    np.testing.assert_array_equal(a[:, 25:], np.asarray(im.convert("RGBA"))[:, 25:, :3])
    assert decoded.converted_from["mode"] == mode  # type: ignore[index]
    assert "composited on white (255, 255, 255)" in decoded.conversion_text()


def test_a_gif_with_a_transparent_palette_index_is_composited() -> None:
    px = np.asarray(Image.fromarray(_rgb()).convert("P", colors=16)).copy()
    px[:10] = 15
    buf = io.BytesIO()
    gif = Image.fromarray(px, "P")
    gif.putpalette(Image.fromarray(_rgb()).convert("P", colors=16).getpalette())
    gif.save(buf, format="GIF", transparency=15)
    decoded = load_image(buf.getvalue())
    assert (decoded.array[:10] == 255).all() and not (decoded.array[10:] == 255).all()
    assert decoded.converted_from["steps"] == ["palette to RGB", "transparency composited on white (255, 255, 255)"]  # type: ignore[index]


def test_the_first_frame_of_an_animated_gif_is_used() -> None:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 10, 10), (10, 200, 10))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    decoded = load_image(buf.getvalue())
    assert (decoded.array == (200, 10, 10)).all()
    assert "first frame of an animated or multi-page file" in decoded.converted_from["steps"]  # type: ignore[index]


@pytest.mark.parametrize(("orientation", "turn"), [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))])
def test_the_exif_orientation_is_applied(orientation: int, turn: object) -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, format="PNG", exif=_exif(orientation))
    decoded = load_image(buf.getvalue())
    np.testing.assert_array_equal(decoded.array, turn(_rgb()))  # type: ignore[operator]
    assert decoded.converted_from == {"mode": "RGB", "format": "PNG", "steps": [decoded.converted_from["steps"][0]]}  # type: ignore[index]
    assert decoded.converted_from["steps"][0].startswith(f"EXIF orientation {orientation} applied")  # type: ignore[index]


def _one_colour_cmyk_profile(lab: tuple[int, int, int]) -> bytes:
    """A minimal ICC v2 output profile (CMYK -> Lab, lut8 A2B0 with a 2-point grid) that maps every
    ink mix to one Lab colour (lut8 encoding: L * 255 / 100, a + 128, b + 128)."""

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    text = b"one-colour CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8) + bytes(3) + bytes(67)
    white = b"XYZ " + bytes(4) + s15(0.9642) + s15(1.0) + s15(0.8249)
    ident = bytes(range(256))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1)) + ident * 4 + bytes(lab) * 16 + ident * 3
    tags = [(b"desc", desc), (b"wtpt", white), (b"cprt", b"text" + bytes(4) + b"none\0"), (b"A2B0", a2b0)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        data += bytes(-(offset + len(data)) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtrCMYKLab " + bytes(12) + b"acspAPPL"
              + bytes(24) + s15(0.9642) + s15(1.0) + s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def test_cmyk_goes_to_srgb_through_its_embedded_icc_profile() -> None:
    buf = io.BytesIO()
    Image.fromarray(_rgb()).convert("CMYK").save(buf, format="JPEG", icc_profile=_one_colour_cmyk_profile((136, 208, 195)))
    decoded = load_image(buf.getvalue())
    colours = np.unique(decoded.array.reshape(-1, 3), axis=0)
    assert len(colours) == 1 and colours[0][0] > 100 and colours[0][1] < 20  # the profile's one colour (a red), not the naive formula's
    assert decoded.converted_from["steps"] == ["CMYK to sRGB through the embedded ICC profile"]  # type: ignore[index]


def test_cmyk_with_an_unusable_icc_profile_falls_back_and_says_so() -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an RGB profile on CMYK data
    buf = io.BytesIO()
    Image.fromarray(_rgb()).convert("CMYK").save(buf, format="JPEG", icc_profile=srgb)
    decoded = load_image(buf.getvalue())
    assert decoded.array.shape == (40, 50, 3)
    assert "embedded ICC profile unusable" in decoded.conversion_text()


def test_cielab_goes_to_srgb_through_an_icc_transform() -> None:
    decoded = load_image(_tiff(Image.fromarray(_rgb()).convert("LAB")))
    assert np.abs(decoded.array.astype(int) - _rgb()).mean() < 3  # Pillow's RGB -> LAB and back, within rounding
    assert "CIELAB to sRGB" in decoded.conversion_text()


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (b"", "empty", "is empty"),
        (b"patient notes, not an image\n" * 3, "not_an_image", "not an image file in an accepted format (JPEG, PNG"),
        (_encode(Image.fromarray(_rgb()), "EPS"), "not_an_image", "accepted format"),  # PostScript: never handed to Ghostscript
        (_tiff(Image.fromarray(np.full((40, 50), np.nan, np.float32), "F")), "unsupported_mode", "NaN or infinite floating-point samples"),
        (_tiff(Image.fromarray(np.full((40, 50), 70_000, dtype=np.int32))), "unsupported_mode", "from 70000 to 70000"),
        (_encode(Image.fromarray(_rgb(8, 50))), "too_small", "each side must be at least 16"),
        (_encode(Image.fromarray(_rgb(400, 400)), "JPEG")[:600], "truncated", "truncated or corrupt"),
    ],
    ids=["empty", "text", "postscript", "nan", "beyond-16-bit", "tiny", "truncated"],
)
def test_bad_inputs_are_rejected_with_a_reason(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(ImageRejected) as e:
        decode_image(data, source="case.jpg")
    assert e.value.reason == reason
    assert str(e.value).startswith("case.jpg: ") and words in str(e.value)


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
