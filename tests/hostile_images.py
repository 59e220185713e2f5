"""Hostile images for the decoding tests, made in milliseconds: small files that declare expensive work."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _segments(jpeg: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment from SOI up to EOI, an SOS segment running to the next marker."""
    spans, position = [], 2
    while position < len(jpeg):
        assert jpeg[position] == 0xFF
        code = jpeg[position + 1]
        if code == 0xD9:
            break
        end = position + 2 + int.from_bytes(jpeg[position + 2 : position + 4], "big")
        if code == 0xDA:  # entropy-coded data: to the next 0xFF that is not stuffing or a restart
            while not (jpeg[end] == 0xFF and jpeg[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        spans.append((position, end))
        position = end
    return spans


def progressive_jpeg_bomb(declared: tuple[int, int], repeats: int, encoded_side: int = 256) -> bytes:
    """A small progressive JPEG whose frame header declares `declared` (width, height) and whose last
    refinement scan is repeated `repeats` times: every repeat costs libjpeg a pass over every block."""
    jpeg = encode(Image.new("L", (encoded_side, encoded_side), 0), "JPEG", progressive=True, quality=75)
    spans = _segments(jpeg)
    body = bytearray()
    for start, end in spans:
        segment = bytearray(jpeg[start:end])
        if segment[1] in (0xC0, 0xC1, 0xC2):  # SOF: height then width after the precision byte
            segment[5:9] = struct.pack(">HH", declared[1], declared[0])
        body += segment
    last_scan = next(jpeg[s:e] for s, e in reversed(spans) if jpeg[s + 1] == 0xDA)
    return b"\xff\xd8" + bytes(body) + last_scan * repeats + b"\xff\xd9"


def many_frame_gif(frames: int, side: int = 28) -> bytes:
    """A GIF whose first frame is a grey `side` x `side` image, followed by `frames - 1` frames of 12 bytes
    (a 1x1 descriptor with no pixel data): counting the frames walks them all."""
    first = encode(Image.new("L", (side, side), 200), "GIF")
    assert first.endswith(b"\x3b")
    empty_frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02" + b"\x00"
    return first[:-1] + empty_frame * (frames - 1) + b"\x3b"


def many_page_tiff(pages: int, side: int = 28) -> bytes:
    """A little-endian TIFF of `pages` grey `side` x `side` uncompressed pages that share one strip of pixels."""
    pixels_at = 8
    strip = bytes([128]) * (side * side)
    first_ifd = pixels_at + len(strip)
    entry_count = 8
    ifd_size = 2 + entry_count * 12 + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", first_ifd) + strip)
    for page in range(pages):
        following = first_ifd + (page + 1) * ifd_size if page + 1 < pages else 0
        entries = [
            (256, 3, 1, side),
            (257, 3, 1, side),
            (258, 3, 1, 8),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (273, 4, 1, pixels_at),
            (278, 3, 1, side),
            (279, 4, 1, len(strip)),
        ]
        out += struct.pack("<H", entry_count)
        for tag, kind, count, value in entries:
            out += (
                struct.pack("<HHII", tag, kind, count, value)
                if kind == 4
                else struct.pack("<HHIHH", tag, kind, count, value, 0)
            )
        out += struct.pack("<I", following)
    return bytes(out)


def black_png(side: int) -> bytes:
    """A black `side` x `side` PNG: deflate shrinks it about a thousandfold."""
    return encode(Image.fromarray(np.zeros((side, side), dtype=np.uint8)), "PNG", compress_level=9)
