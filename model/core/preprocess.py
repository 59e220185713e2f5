"""The preprocessing contract: how an arbitrary image becomes model input.

Defined once, here, with numpy and Pillow only (no torch), so that training, `vae-eval`
and the service use the same code. The contract is recorded in the exported manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile

try:  # libspng's binding: optional, Pillow decodes everything without it (plain_png)
    from pyspng import _pyspng_c as _spng  # its decoder itself: pyspng.load only adds a format table
except ImportError:  # pragma: no cover - installed with the service
    _spng = None

# Never decode a partial image silently: truncated bytes are an error, not grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Decompression bombs are refused by `open_image`'s own limit, checked on the header before any pixel is
# decoded, so Pillow's global limit (and the warnings.catch_warnings it would need per call) is turned off.
Image.MAX_IMAGE_PIXELS = None

# The formats the service lists. Image.open is told to try only these, so hostile bytes never reach
# Pillow's other plugins (EPS runs Ghostscript; PSD, ICNS, PDF, SPIDER... are attack surface we do not need).
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
# A JPEG's decode cost grows with its scans (each progressive refinement scan touches every block),
# and a scan can be a few bytes. libjpeg's standard progressive scripts use 6 (grey) or 10 (colour).
DEFAULT_MAX_JPEG_SCANS = 64
# Resizes to the model's size first `reduce()` by an integer factor while the image stays at least this
# many times the target: Pillow's documented point where the result is near a full-size resample.
REDUCING_GAP = 3.0
# An entropy-coded JPEG byte 0xFF is followed by 0x00 (stuffing) or a restart marker 0xD0-0xD7;
# anything else (after fill bytes 0xFF) is the next marker.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image (corrupt, truncated or unknown format)."""


class ImageTooLargeError(ValueError):
    """The image declares more pixels than allowed; refused before decoding."""


class ImageTooComplexError(ValueError):
    """The image is small but declares work out of proportion to it (a JPEG with too many scans)."""


@dataclass(frozen=True)
class PreprocessContract:
    """How an uploaded image becomes a float32 array of `input_shape` in [0, 1]."""

    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    resize_filter: str = "bilinear"  # used only when the image is not already H x W
    alpha_background: int = 0  # transparent pixels are composited onto this grey level
    # How a [0, 1] image then becomes the likelihood's data space is the likelihood's own
    # `to_data_space` (model/core/likelihoods.py).

    def __post_init__(self) -> None:
        if self.resize_filter not in _RESAMPLE:
            raise ValueError(f"resize_filter must be one of {sorted(_RESAMPLE)}, not {self.resize_filter!r}")
        if self.input_shape[0] not in (1, 3):
            raise ValueError("input_shape must have 1 (grey) or 3 (RGB) channels")

    @property
    def mode(self) -> str:
        return "L" if self.input_shape[0] == 1 else "RGB"

    def describe(self) -> dict[str, Any]:
        """The contract as recorded in the manifest."""
        channels, height, width = self.input_shape
        return {
            **dataclasses.asdict(self),
            "mode": self.mode,
            "frames": "first frame of animated or multi-page images (frames are never counted)",
            "bit_depth": "16-bit grey scaled to 8 bits as round(value / 257); 32-bit integer and float images refused",
            "large_images": f"JPEGs at least twice {height}x{width} are decoded at 1/2, 1/4 or 1/8 scale (libjpeg "
            f"DCT scaling) and images at least {REDUCING_GAP:g}x larger are box-reduced by an integer "
            "factor before the resize; their pixels differ slightly from a full-size resize",
            "alpha": f"composited onto grey level {self.alpha_background} before mode conversion",
            "size": [height, width],
            "resize": f"{self.resize_filter} to exactly {height}x{width} (aspect ratio not kept) when sizes differ",
            "grey_conversion": "Pillow 'L' (ITU-R 601-2 luma)" if channels == 1 else "Pillow 'RGB'",
            "scaling": "pixel / 255 -> float32 in [0, 1], layout (C, H, W)",
            "binarization": "bernoulli likelihood: x ~ Bernoulli(pixel), seeded; binary images pass unchanged",
            "dequantization": "gaussian likelihood: x = (round(255 * pixel) + u) / 256, u ~ U(0, 1), seeded",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["input_shape"] = tuple(kwargs.get("input_shape", cls.input_shape))
        return cls(**kwargs)


def open_image(data: bytes, max_pixels: int, max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS) -> Image.Image:
    """Open image bytes lazily (header only) and refuse what would cost out of proportion before any
    pixel is decoded: too many declared pixels, or a JPEG with too many scans."""
    declared = webp_size(data)  # libwebp allocates the whole canvas when Pillow opens a WebP
    if declared is not None:
        _check_pixels(*declared, max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise ImageDecodeError("the bytes are not a decodable PNG, JPEG, WebP, BMP, GIF or TIFF image") from exc
    _check_pixels(*image.size, max_pixels)
    if image.format == "JPEG" and jpeg_scan_count(data, stop_after=max_jpeg_scans) > max_jpeg_scans:
        raise ImageTooComplexError(
            f"the JPEG has more than {max_jpeg_scans} scans (a progressive JPEG has "
            "about 10); each scan costs a pass over the whole image"
        )
    return image


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


def webp_size(data: bytes) -> tuple[int, int] | None:
    """A WebP's declared (width, height) from its first chunk (VP8X canvas, VP8L or VP8 frame header);
    None when the bytes are not a WebP this reads."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    kind = data[12:16]
    if kind == b"VP8X":  # 24-bit canvas width - 1, height - 1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if kind == b"VP8L":  # after the 0x2f signature: 14 bits of width - 1, 14 of height - 1
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if kind == b"VP8 ":  # after the frame tag and start code: 14-bit width, 14-bit height
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


def jpeg_scan_count(data: bytes, stop_after: int) -> int:
    """The JPEG's SOS (start of scan) markers, counting past `stop_after` only as far as `stop_after + 1`.

    Byte stuffing keeps 0xFF 0xDA out of entropy-coded data, so `bytes.count` (memchr speed) is an
    upper bound and exact for most files; only when that bound is over the cap are the markers walked,
    skipping segment payloads (an EXIF thumbnail or a comment may hold the same two bytes)."""
    upper_bound = data.count(b"\xff\xda")
    if upper_bound <= stop_after:
        return upper_bound
    scans, position = 0, 2  # after SOI
    while scans <= stop_after:
        marker = _JPEG_MARKER.search(data, position)
        if marker is None:
            break
        code, position = data[marker.start() + 1], marker.end()
        if code == 0xD9:  # EOI
            break
        if 0xD0 <= code <= 0xD8 or code == 0x01:  # markers without a payload
            continue
        if position + 2 > len(data):
            break
        position += int.from_bytes(data[position : position + 2], "big")  # the segment's own length
        scans += code == 0xDA  # entropy-coded data follows a scan header; the search skips it
    return scans


def image_to_array(image: Image.Image, contract: PreprocessContract) -> np.ndarray:
    """Apply the contract to the first frame: alpha, mode, size, scaling. Returns (C, H, W) float32 in [0, 1].

    Frames are never counted or sought (Pillow's `n_frames` walks every frame, quadratically for
    TIFF): an opened image is positioned on its first frame and `load()` decodes only that one."""
    _, height, width = contract.input_shape
    try:
        if image.format == "JPEG" and image.width >= 2 * width and image.height >= 2 * height:
            image.draft(image.mode, (width, height))  # DCT scaling: libjpeg skips the detail we drop
        image.load()
    except Exception as exc:  # truncated data surfaces here, at load()
        raise ImageDecodeError("the image data is truncated or corrupt") from exc
    try:
        image = _to_8_bit(image)
        image = _flatten_alpha(image, contract.alpha_background)
        if image.mode == "LAB":  # Pillow converts LAB only to RGB
            image = image.convert("RGB")
        if image.mode != contract.mode:
            image = image.convert(contract.mode)
        if image.size != (width, height):
            image = image.resize((width, height), _RESAMPLE[contract.resize_filter], reducing_gap=REDUCING_GAP)
        pixels = np.asarray(image, dtype=np.float32)  # (H, W) or (H, W, C)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"the image (mode {image.mode}) could not be converted to {contract.mode}") from exc
    pixels = pixels[None, :, :] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    return pixels * np.float32(1.0 / 255.0)


def bytes_to_array(
    data: bytes,
    contract: PreprocessContract,
    max_pixels: int = 40_000_000,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
) -> np.ndarray:
    """Decode image bytes and apply the contract."""
    plain = plain_png(data, contract)
    if plain is not None:
        return plain
    return image_to_array(open_image(data, max_pixels, max_jpeg_scans), contract)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that leave the pixels Pillow gives an 8-bit grey or RGB PNG as they are (colour and gamma
# information Pillow does not apply, text, times, the background colour a viewer would use).
_PLAIN_PNG_CHUNKS = frozenset(
    (b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"tIME", b"tEXt", b"bKGD")
)
_PLAIN_PNG_MAX_CHUNKS = 16


def plain_png(data: bytes, contract: PreprocessContract) -> np.ndarray | None:
    """The contract applied to a PNG that needs nothing but decoding, by libspng; None for any other image.

    Plain means: 8 bits a sample, already in the contract's mode (grey, colour type 0, for an "L"
    model; RGB, colour type 2, for an "RGB" one) and size, no palette, no transparency, at most 16
    chunks, all of them ones that do not change the pixels (_PLAIN_PNG_CHUNKS), ending in IEND. Such
    an image is exactly its decoded samples / 255 whichever decoder reads it, and libspng (pyspng)
    reads a 28 x 28 one about five times faster than Pillow's Python chunk reader; a test checks the
    arrays are equal to Pillow's, bit for bit (tests/unit/model/core/test_plain_png.py). Not interlaced,
    every chunk's CRC right and the image data one whole zlib stream of exactly the image's scanlines,
    checked here: pyspng has libspng skip those checks, which Pillow makes. Anything else, or any error,
    or pyspng not installed: None, and Pillow decodes it with every check. (On /encode's path for every
    request: written for few Python operations.)"""
    shape = tuple(contract.input_shape)
    expected = _PLAIN_HEADERS.get(shape) or _plain_header(shape)  # then data[28], interlace: 0
    if _spng is None or len(data) < 45 or data[:28] != expected or data[28] or not _plain_chunks(data, shape):
        return None
    try:
        samples: np.ndarray = _spng.spng_decode_image_bytes(data, _SPNG_FORMATS[shape[0]])  # (H, W, C) uint8
    except Exception:  # whatever libspng refuses, Pillow reads or refuses with its own message
        return None
    if samples.shape != (shape[1], shape[2], shape[0]) or samples.dtype != np.uint8:
        return None
    pixels = samples.reshape(shape) if shape[0] == 1 else samples.transpose(2, 0, 1)
    scaled: np.ndarray = np.multiply(pixels, _BY_255, dtype=np.float32)  # as image_to_array scales Pillow's
    return scaled


_BY_255 = np.float32(1.0 / 255.0)
_SPNG_FORMATS = {1: _spng.SPNG_FMT_G8, 3: _spng.SPNG_FMT_RGB8} if _spng is not None else {}
_PLAIN_HEADERS: dict[tuple[int, ...], bytes] = {}


def _plain_header(shape: tuple[int, ...]) -> bytes:
    """The first 28 bytes of a plain PNG of this (C, H, W): the signature, then IHDR's length (13),
    type, width, height, depth 8, colour type (0 grey, 2 RGB), compression 0 and filter 0; the byte
    after (interlace) is 0 or 1."""
    channels, height, width = shape
    colour = 0 if channels == 1 else 2
    header = PNG_SIGNATURE + b"\x00\x00\x00\rIHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big")
    _PLAIN_HEADERS[shape] = header = header + bytes((8, colour, 0, 0))
    return header


def _plain_chunks(data: bytes, shape: tuple[int, ...]) -> bool:
    """At most _PLAIN_PNG_MAX_CHUNKS chunks, each of _PLAIN_PNG_CHUNKS, within the bytes and with its CRC
    right, the last IEND; the IDAT data one zlib stream (its Adler-32 checked) of exactly the scanlines of
    a non-interlaced 8-bit image of `shape` (C, H, W): H rows of a filter byte and W x C samples."""
    position, end, plain, idat = 8, len(data), _PLAIN_PNG_CHUNKS, []
    for _ in range(_PLAIN_PNG_MAX_CHUNKS):
        kind = data[position + 4 : position + 8]
        if position + 12 > end or kind not in plain:
            return False
        stop = position + 8 + int.from_bytes(data[position : position + 4], "big")  # after the chunk's data
        if stop + 4 > end or zlib.crc32(data[position + 4 : stop]) != int.from_bytes(data[stop : stop + 4], "big"):
            return False
        if kind == b"IDAT":
            idat.append(data[position + 8 : stop])
        elif kind == b"IEND":
            return _whole_stream(b"".join(idat), shape[1] * (1 + shape[2] * shape[0]))
        position = stop + 4
    return False


def _whole_stream(compressed: bytes, size: int) -> bool:
    """One complete zlib stream that inflates to exactly `size` bytes, nothing after it."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, size + 1)
    except zlib.error:
        return False
    return len(raw) == size and inflater.eof and not inflater.unused_data and not inflater.unconsumed_tail


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit grey to 8 bits by rounding (Pillow's own conversion clips at 255, so 256..65535 would all
    be white); 32-bit integer and float images have no defined range and are refused."""
    if image.mode in _SIXTEEN_BIT:
        levels = np.asarray(image).astype(np.uint32)  # (H, W)
        return Image.fromarray(((levels + 128) // 257).astype(np.uint8))
    if image.mode in ("I", "F"):
        raise ImageDecodeError(
            f"{'32-bit integer' if image.mode == 'I' else 'floating-point'} images have no "
            "defined pixel range; send an 8- or 16-bit image"
        )
    return image


def _flatten_alpha(image: Image.Image, background: int) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def image_stream(seed: int, image: np.ndarray) -> np.random.Generator:
    """The noise stream of one image, keyed by the seed and the image's content: the first 8 bytes of
    the BLAKE2b digest of its float32 (C, H, W) C-order bytes, as two uint32 words. Never its position,
    so an image draws the same noise alone or in any batch, and duplicates draw alike."""
    data = np.ascontiguousarray(image, dtype=np.float32).tobytes()
    words = np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), dtype="<u4")
    return np.random.default_rng([seed, *(int(w) for w in words)])


def array_to_png(pixels: np.ndarray) -> bytes:
    """(C, H, W) float in [0, 1] -> PNG bytes (grey for C=1, RGB for C=3)."""
    data = np.clip(np.rint(np.asarray(pixels) * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(data[0] if data.shape[0] == 1 else data.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) -> one (C, rows * (H + p) + p, columns * (W + p) + p) image, padding in black."""
    count, channels, height, width = images.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    grid = np.zeros(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding), dtype=np.float32
    )
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[:, top : top + height, left : left + width] = images[index]
    return grid
