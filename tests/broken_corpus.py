"""A corpus of valid-but-odd and broken inputs, each with the outcome ingest must give it."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from relightflow.testing import render_scene

KEEP = "keep"


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _jpeg_frame_size(data: bytes, height: int, width: int) -> bytes:
    """A JPEG whose SOF0 header claims another frame size than its data holds."""
    i = data.index(b"\xff\xc0")
    b = bytearray(data)
    b[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(b)


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_corpus(root: Path) -> dict[str, str]:
    """Write the corpus under ``root``; return {relpath: expected outcome ('keep' or a reason prefix)}."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = render_scene(size=96)[0]
    pil = Image.fromarray(rgb)
    good_jpeg = _jpeg_bytes(pil)
    good_png = _png_bytes(rgb)
    expected: dict[str, str] = {}

    def put(rel: str, data: bytes, outcome: str) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        expected[rel] = outcome
        return p

    put("ok/plain.jpg", good_jpeg, KEEP)
    put("ok/UPPER.JPG", _jpeg_bytes(pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), KEEP)
    put("ok/png_named.jpg", good_png, KEEP)  # wrong extension: content decides
    put("ok/cmyk.jpg", _jpeg_bytes(pil.convert("CMYK")), KEEP)
    put("ok/gray16.png", _png_bytes(np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7), KEEP)
    put("ok/palette.png", _png_bytes(np.asarray(pil.convert("P", palette=Image.Palette.ADAPTIVE)), "P"), KEEP)
    put("ok/rgba.png", _png_bytes(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])), KEEP)
    put("ok/gray.png", _png_bytes(np.asarray(pil.convert("L"))), KEEP)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("ok/rotated.jpg", _jpeg_bytes(pil.crop((0, 0, 96, 64)), exif=exif.tobytes()), KEEP)
    for fmt, ext in (("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")):
        buf = io.BytesIO()
        pil.save(buf, format=fmt)
        put(f"ok/other.{ext}", buf.getvalue(), KEEP)
    put("ok/duplicate_of_plain.jpg", good_jpeg, KEEP)  # same bytes, other name: kept (path ids)

    put("bad/empty.jpg", b"", "empty file")
    put("bad/truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "corrupt image")
    put("bad/truncated.png", good_png[: len(good_png) // 2], "corrupt image")
    put("bad/text.jpg", b"hello, I am not an image\n", "not an image")
    put(
        "bad/garbage_body.jpg",
        good_jpeg[:200] + np.random.default_rng(0).bytes(2000),
        "corrupt image|not an image",
    )
    put("bad/one_pixel.png", _png_bytes(np.zeros((1, 1, 3), np.uint8)), "too small")
    put("bad/bomb.png", _bomb_png(100_000, 100_000), "too many pixels")
    put("bad/unreadable.jpg", good_jpeg, "unreadable")
    (root / "bad/unreadable.jpg").chmod(0)
    os.symlink("loop_b.jpg", root / "bad/loop_a.jpg")
    os.symlink("loop_a.jpg", root / "bad/loop_b.jpg")
    expected["bad/loop_a.jpg"] = expected["bad/loop_b.jpg"] = "symlink loop"
    os.symlink("does_not_exist.jpg", root / "bad/dangling.jpg")
    expected["bad/dangling.jpg"] = "cannot stat"
    os.symlink("../ok/plain.jpg", root / "bad/link_to_plain.jpg")  # not listed twice
    bad_name = os.fsdecode(b"bad/latin1_\xe9t\xe9.jpg")
    put(bad_name, good_jpeg, "file name is not valid UTF-8")
    (root / "ok/folder.jpg").mkdir()  # a folder with an image suffix is searched, not read
    put("ok/folder.jpg/inner.png", good_png, KEEP)
    put("ok/notes.txt", b"not listed: wrong extension", "unlisted")
    del expected["ok/notes.txt"]

    # plugins that raise other errors than OSError, formats that are not allowed, non-regular files
    put("bad/ppm_header_only.jpg", b"P6", "not an image")  # Pillow's PPM plugin: ValueError at open
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n"
    put("bad/postscript.jpg", eps, "not an image")  # EPS would run Ghostscript: never opened
    put("bad/pdf.jpg", b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n", "not an image")
    put("bad/icon.jpg", _encoded(pil.resize((64, 64)), "ICO"), "not an image")  # a format not allowed
    psd = b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 96, 96, 8, 3) + b"\x00" * 30
    put("bad/photoshop.jpg", psd, "not an image")
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (16 << 20)))
    put("bad/text_chunk_bomb.png", good_png[:33] + ztxt + good_png[33:], "unreadable")  # ValueError at open
    put("bad/jpeg_zero_height.jpg", _jpeg_frame_size(good_jpeg, 0, 96), "not an image")
    put("bad/jpeg_huge_frame.jpg", _jpeg_frame_size(good_jpeg, 65500, 65500), "too many pixels")
    bmp = b"BM" + struct.pack("<IHHI", 100, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 10**6, 10**6, 1, 24, 0, 0, 0, 0, 0, 0)
    put("bad/bmp_bomb.bmp", bmp, "too many pixels")
    bad_crc = bytearray(good_png)
    bad_crc[29] ^= 0xFF
    put("bad/png_bad_crc.png", bytes(bad_crc), "not an image|corrupt image")
    put("bad/png_no_data.png", good_png[:33] + _png_chunk(b"IEND", b""), "corrupt image")
    put("bad/tiff_bad_ifd.tif", b"II*\x00" + struct.pack("<IH", 8, 5) + b"\xff" * 20, "not an image|corrupt image")
    webp = _encoded(pil, "WEBP")
    put("bad/webp_truncated.webp", webp[: len(webp) // 2], "unreadable|corrupt image")
    put("ok/gif_named.png", _encoded(pil, "GIF"), KEEP)  # GIF is allowed; the content decides
    os.mkfifo(root / "bad/fifo.jpg")  # would block a reader forever: never opened
    expected["bad/fifo.jpg"] = "not a regular file"
    os.symlink("/dev/zero", root / "bad/device.jpg")  # an endless stream behind a link: never opened
    expected["bad/device.jpg"] = "not a regular file"
    return expected
