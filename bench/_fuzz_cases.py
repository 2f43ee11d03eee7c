"""The inputs of ``bench/fuzz.py fuzz``: a seeded, bounded stream of requests, each with what it must get.

Kinds (``Case.kind``) and what each must get (``Case.expect``):

* ``valid``: a valid image (every mode and format Pillow writes and reads back, in the formats the
  service opens, also transparent, 16-bit, EXIF-rotated, animated, multi-page, hostile file names,
  odd but valid form fields): **200**.
* ``policy``: something the service refuses by design, with its documented status and reason:
  floating-point samples and formats it does not open (415), too few or too many pixels and
  decompression bombs (422/413), files over the cap (413), over-long fields and file names (422),
  no or a wrong API key (401/403), no file (422), invalid metadata (422).
* ``mutated``: truncations and bit flips of real JPEG/PNG files (the packaged HAM10000 samples):
  200 or 4xx, **never 5xx**.
* ``random``: random bytes, alone or behind an image format's magic number: 4xx.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms

from bench._live import KEY

MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F")
#: Formats Pillow writes but does not read back by itself (or only through external programs).
WRITE_ONLY = {"PDF", "PALM", "XVTHUMB"}
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "skinlesion" / "samples" / "ham10000"


@dataclass
class Case:
    kind: str
    name: str
    route: str = "/predict"
    data: bytes = b""
    filename: str | None = "image"
    form: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=lambda: {"X-API-Key": KEY})
    expect: tuple[int, str] | None = None  # (status, reason) for policy cases
    mode: str | None = None  # what the file is (valid cases): the mode Pillow reads back, or the kind of file
    converts: bool | None = None  # valid cases: whether the answer must say what was converted (None: not checked)
    raw_body: bytes | None = None  # sent as it is (no multipart)


def _lesion(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    from skinlesion.data.synthetic import generate_lesion

    label = str(rng.choice(["MEL", "NV", "BCC", "BKL", "AKIEC", "DF", "VASC"]))
    image, _, _ = generate_lesion(label, int(rng.integers(1 << 30)), size=(h, w), hair=bool(rng.integers(2)), vignette=bool(rng.integers(2)))
    return Image.fromarray(image)


def _as_mode(im: Image.Image, mode: str, rng: np.random.Generator) -> Image.Image:
    if mode in ("I;16", "I;16B", "I"):
        a = (np.asarray(im.convert("L"), dtype=np.uint32) * 257).astype(np.uint16 if mode != "I" else np.int32)
        out = Image.fromarray(a)
        return out.convert(mode) if mode == "I;16B" else out
    if mode in ("RGBA", "LA", "PA"):
        base = im.convert({"RGBA": "RGB", "LA": "L", "PA": "P"}[mode]).convert(mode)
        alpha = np.full(im.size[::-1], 255, np.uint8)
        if rng.random() < 0.7:
            alpha[: im.size[1] // 3] = rng.integers(0, 256)
        base.putalpha(Image.fromarray(alpha))
        return base
    return im.convert(mode)


def _save(im: Image.Image, fmt: str, **kw: Any) -> bytes | None:
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **kw)
    except Exception:  # noqa: BLE001 - Pillow cannot write this mode in this format
        return None
    return buf.getvalue()


def _read_back(data: bytes) -> tuple[str, str] | None:
    """(format, mode) when Pillow itself opens and decodes ``data``, else None."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return str(im.format), im.mode
    except Exception:  # noqa: BLE001
        return None


def _expect_image(back: tuple[str, str]) -> tuple[str, tuple[int, str] | None]:
    from skinlesion.delivery.images import FORMATS

    fmt, _ = back
    if fmt not in FORMATS and not (fmt == "MPO" and "JPEG" in FORMATS):
        return "policy", (415, "not_an_image")
    return "valid", None


def matrix(rng: np.random.Generator) -> Iterator[Case]:
    """Every (format, mode) Pillow writes and reads back, at a random size (one pass)."""
    Image.init()
    for fmt in sorted(set(Image.SAVE) - WRITE_ONLY):
        for mode in MODES:
            h, w = int(rng.integers(16, 300)), int(rng.integers(16, 300))
            if fmt in ("ICO", "ICNS", "BLP", "DDS"):
                h = w = int(rng.choice([16, 32, 64, 128]))
            data = _save(_as_mode(_lesion(rng, h, w), mode, rng), fmt)
            back = None if data is None else _read_back(data)
            if data is None or back is None:
                continue
            kind, expect = _expect_image(back)
            yield Case(kind, f"matrix {fmt} {mode}->{back[1]}", data=data, filename=f"m.{fmt.lower()}", expect=expect, mode=back[1],
                       converts=back[1] != "RGB")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def valid(rng: np.random.Generator, i: int) -> Case:
    """One valid image of a varied kind (``i`` picks the kind)."""
    h, w = int(rng.integers(16, 700)), int(rng.integers(16, 900))
    im = _lesion(rng, h, w)
    kind = i % 9
    if kind == 0:
        data = _save(im, "JPEG", quality=int(rng.integers(30, 100)), progressive=bool(rng.integers(2)), subsampling=int(rng.integers(3)))
        name = "jpeg"
    elif kind == 1:
        data, name = _save(im, "JPEG", exif=_exif(int(rng.integers(2, 9)))), "jpeg+exif orientation"
    elif kind == 2:
        data, name = _save(im.convert("CMYK"), "JPEG"), "cmyk jpeg"
    elif kind == 3:
        data, name = _save(_as_mode(im, "RGBA", rng), "PNG"), "rgba png"
    elif kind == 4:
        data, name = _save(im.convert("P", colors=int(rng.integers(2, 256))), "GIF", transparency=0), "palette gif, transparent index"
    elif kind == 5:
        data, name = _save(_as_mode(im, "I;16", rng), "PNG"), "16-bit png"
    elif kind == 6:
        frames = [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        fmt = str(rng.choice(["GIF", "PNG", "WEBP", "TIFF"]))
        data, name = _save(frames[0], fmt, save_all=True, append_images=frames[1:]), f"animated/multi-page {fmt}"
    elif kind == 7:
        comp = str(rng.choice(["raw", "tiff_lzw", "tiff_deflate", "packbits", "jpeg"]))
        data, name = _save(im, "TIFF", compression=comp), f"tiff {comp}"
    else:
        data, name = _save(im, "WEBP", quality=int(rng.integers(30, 100)), lossless=bool(rng.integers(2))), "webp"
    assert data is not None, name
    return Case("valid", name, data=data, filename=f"v{i}.img", mode=name, converts=kind in (1, 2, 3, 4, 5, 6) or (False if kind in (0, 8) else None))


HOSTILE_NAMES = (
    '=HYPERLINK("http://x","y").png', "@SUM(1+1)*cmd|' /C calc'!A0.png", "+1-2.jpg", "-2+3.jpg", "\t=tab.png", "../../etc/passwd",
    "C:\\Windows\\system32\\x.png", "<script>alert(1)</script>.png", "x\\y.png", "name\nwith newline.png", "\u202egpj.exe", "ümlaut–ünïcödé.png",
    ".", "a" * 255,
)
HOSTILE_FIELDS = (
    {"site": "=cmd|' /C calc'!A0"}, {"sex": "<script>"}, {"age": "1e308"}, {"age": "-1"}, {"age": "NaN"}, {"site": "back"},
    {"age": "55", "sex": "female", "site": "back"}, {"site": "\x00"}, {"sex": "unknown"}, {"age": " 42 "},
)


def hostile(rng: np.random.Generator, i: int) -> Case:
    """A valid image with a hostile file name or form field: 200, or the 422 the field deserves."""
    data = _save(_lesion(rng, int(rng.integers(16, 200)), int(rng.integers(16, 200))), "PNG")
    assert data is not None
    if i % 2 == 0:
        name = HOSTILE_NAMES[(i // 2) % len(HOSTILE_NAMES)]
        return Case("valid", f"hostile name {name[:20]!r}", data=data, filename=name, mode="hostile file name", converts=False)
    form = HOSTILE_FIELDS[(i // 2) % len(HOSTILE_FIELDS)]
    invalid = form.get("age") in ("1e308", "-1", "NaN") or form.get("sex") == "<script>"  # a site is free text (unknown ones are ignored)
    return Case("policy" if invalid else "valid", f"hostile field {form}", data=data, form=dict(form),
                expect=(422, "invalid_metadata") if invalid else None, mode="hostile form field", converts=False)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries one row of data (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + bytes(3 * min(w, 1000)))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def policy(rng: np.random.Generator, i: int, max_upload: int) -> Case:
    """Something refused by design, with its status and reason."""
    small = _save(_lesion(rng, 64, 80), "PNG")
    assert small is not None
    kind = i % 12
    if kind == 0:
        return Case("policy", "tiny 15 px side", data=_save(Image.new("RGB", (15, int(rng.integers(16, 500)))), "PNG") or b"", expect=(422, "too_small"))
    if kind == 1:
        return Case("policy", "1x1", data=_save(Image.new("RGB", (1, 1)), "PNG") or b"", expect=(422, "too_small"))
    if kind == 2:
        return Case("policy", "bomb: 100000x100000 PNG header", data=_png_header_only(100_000, 100_000), expect=(413, "too_many_pixels"))
    if kind == 3:
        side = int(rng.integers(7100, 12_000))
        return Case("policy", f"bomb: solid {side}x{side} PNG", data=_save(Image.new("L", (side, side)), "PNG") or b"", expect=(413, "too_many_pixels"))
    if kind == 4:
        nan = Image.fromarray(np.full((40, 50), np.nan, np.float32), "F")
        return Case("policy", "NaN float TIFF", data=_save(nan, "TIFF") or b"", expect=(415, "unsupported_mode"))
    if kind == 5:
        return Case("policy", "no API key", data=small, headers={}, expect=(401, "api_key_missing"))
    if kind == 6:
        return Case("policy", "wrong API key", data=small, headers={"X-API-Key": "guess" * int(rng.integers(1, 50))}, expect=(403, "api_key_invalid"))
    if kind == 7:
        return Case("policy", "500 kB site field", data=small, form={"site": "x" * 500_000}, expect=(422, "invalid_request"))
    if kind == 8:
        return Case("policy", "300-character file name", data=small, filename="n" * 300 + ".png", expect=(422, "invalid_request"))
    if kind == 9:
        return Case("policy", "no file field", data=small, filename=None, expect=(422, "missing_file"))
    if kind == 10:
        return Case("policy", "empty file", data=b"", expect=(422, "empty"))
    if i % 48 == 11:  # a few: 31 MB each
        return Case("policy", "file over the upload cap", data=b"\xff\xd8\xff" + bytes(max_upload + 1000), expect=(413, "too_large"))
    return Case("policy", "JSON body, not a form", raw_body=b'{"file": "x"}', expect=(422, "missing_file"))


def mutated(rng: np.random.Generator, originals: list[bytes]) -> Case:
    """A truncation or some bit flips of a real JPEG/PNG file."""
    data = bytearray(originals[int(rng.integers(len(originals)))])
    if rng.random() < 0.5:
        cut = int(rng.integers(1, len(data)))
        return Case("mutated", f"truncated at {cut}/{len(data)}", data=bytes(data[:cut]))
    n = int(rng.integers(1, 40))
    for pos in rng.integers(0, len(data), size=n):
        data[pos] ^= 1 << int(rng.integers(8))
    return Case("mutated", f"{n} bit flips", data=bytes(data))


MAGIC = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"\x00\x00\x00\x0cjP  ")


def random_bytes(rng: np.random.Generator) -> Case:
    magic = MAGIC[int(rng.integers(len(MAGIC)))]
    body = rng.integers(0, 256, size=int(rng.integers(1, 100_000)), dtype=np.uint8).tobytes()
    return Case("random", f"random bytes behind {magic[:4]!r}", data=magic + body)


def originals() -> list[bytes]:
    """The packaged HAM10000 sample JPEGs and PNG copies of them."""
    jpegs = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))]
    pngs = [_save(Image.open(io.BytesIO(j)), "PNG") for j in jpegs[:6]]
    return jpegs + [p for p in pngs if p]


def icc_rgb(rng: np.random.Generator) -> Case:
    """An RGB JPEG with an embedded sRGB ICC profile (valid)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return Case("valid", "jpeg with an ICC profile", data=_save(_lesion(rng, 120, 160), "JPEG", icc_profile=profile) or b"",
                mode="RGB jpeg + ICC profile", converts=False)


def cases(n: int, seed: int, max_upload: int, max_pixels: int) -> Iterator[Case]:
    """About ``n`` cases: the (format, mode) matrix, then valid, hostile, policy, mutated and random ones
    in turn, a few /explain, and two valid images just under the pixel limit."""
    rng = np.random.default_rng(seed)
    count = 0
    for case in matrix(rng):
        count += 1
        yield case
    side = int(np.sqrt(max_pixels * 0.96))
    for fmt in ("PNG", "JPEG"):
        big = _save(_lesion(rng, 200, 200).resize((side, side)), fmt) or b""
        yield Case("valid", f"{side}x{side} {fmt} just under the pixel limit", data=big, mode=f"RGB {fmt} {side}x{side}", converts=False)
        count += 1
    yield icc_rgb(rng)
    count += 1
    base = originals()
    i = 0
    while count < n:
        pick = i % 10
        if pick in (0, 1, 2):
            case = valid(rng, i)
            if i % 25 == 0:
                case.route = "/explain"
        elif pick == 3:
            case = hostile(rng, i // 10)
        elif pick in (4, 5):
            case = policy(rng, i // 10 * 2 + pick - 4, max_upload)
        elif pick in (6, 7, 8):
            case = mutated(rng, base)
        else:
            case = random_bytes(rng)
        i += 1
        count += 1
        yield case
