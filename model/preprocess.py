"""The preprocessing contract: how an arbitrary image becomes model input.

Defined once, here, with numpy and Pillow only (no torch), so that training, `vae-eval`
and the service use the same code. The contract is recorded in the exported manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile

# Never decode a partial image silently: truncated bytes are an error, not grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Decompression bombs are refused by `open_image`'s own limit, checked on the header before any pixel is
# decoded, so Pillow's global limit (and the warnings.catch_warnings it would need per call) is turned off.
Image.MAX_IMAGE_PIXELS = None

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


@dataclass(frozen=True)
class PreprocessContract:
    """How an uploaded image becomes a float32 array of `input_shape` in [0, 1]."""

    input_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    resize_filter: str = "bilinear"  # used only when the image is not already H x W
    alpha_background: int = 0  # transparent pixels are composited onto this grey level
    # How a [0, 1] image becomes the likelihood's data space:
    #   bernoulli: stochastic binarisation x ~ Bernoulli(pixel) (binary images pass unchanged)
    #   gaussian:  dequantisation x = (round(255 * pixel) + u) / 256, u ~ U(0, 1)

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
            "frames": "first frame of animated or multi-page images",
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


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open image bytes lazily (header only) and refuse decompression bombs before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise ImageDecodeError("the bytes are not a decodable image") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def image_to_array(image: Image.Image, contract: PreprocessContract) -> np.ndarray:
    """Apply the contract: first frame, alpha, mode, size, scaling. Returns (C, H, W) float32 in [0, 1]."""
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        image = _flatten_alpha(image, contract.alpha_background)
        if image.mode != contract.mode:
            image = image.convert(contract.mode)
        _, height, width = contract.input_shape
        if image.size != (width, height):
            image = image.resize((width, height), _RESAMPLE[contract.resize_filter])
        pixels = np.asarray(image, dtype=np.float32)  # (H, W) or (H, W, C)
    except Exception as exc:  # truncated data surfaces here, at load()
        raise ImageDecodeError("the image data is truncated or corrupt") from exc
    pixels = pixels[None, :, :] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    return pixels * np.float32(1.0 / 255.0)


def bytes_to_array(data: bytes, contract: PreprocessContract, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode image bytes and apply the contract."""
    return image_to_array(open_image(data, max_pixels), contract)


def _flatten_alpha(image: Image.Image, background: int) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def binarize(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stochastic binarisation x ~ Bernoulli(pixel): the convention of the VAE literature."""
    return (rng.random(pixels.shape, dtype=np.float32) < pixels).astype(np.float32)


def dequantize(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform dequantisation of 8-bit pixels to a continuous density on [0, 1]."""
    levels = np.round(pixels * 255.0)
    return ((levels + rng.random(pixels.shape, dtype=np.float32)) / 256.0).astype(np.float32)


def to_data_space(pixels: np.ndarray, likelihood: str, rng: np.random.Generator) -> np.ndarray:
    """Map [0, 1] pixels to the likelihood's data space (binary, or dequantised continuous)."""
    if likelihood == "bernoulli":
        return binarize(pixels, rng)
    if likelihood == "gaussian":
        return dequantize(pixels, rng)
    raise ValueError(f"unknown likelihood {likelihood!r}")


def image_stream(seed: int, image: np.ndarray) -> np.random.Generator:
    """The noise stream of one image, keyed by the seed and the image's content: the first 8 bytes of
    the BLAKE2b digest of its float32 (C, H, W) C-order bytes, as two uint32 words. Never its position,
    so an image draws the same noise alone or in any batch, and duplicates draw alike."""
    data = np.ascontiguousarray(image, dtype=np.float32).tobytes()
    words = np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), dtype="<u4")
    return np.random.default_rng([seed, *(int(w) for w in words)])


def images_to_data_space(pixels: np.ndarray, likelihood: str, seed: int) -> np.ndarray:
    """`to_data_space` image by image, each with its own `image_stream(seed, pixels[i])`, so an image's
    binarisation (or dequantisation) does not depend on the other images. (N, C, H, W) -> (N, C, H, W)"""
    data = np.empty(pixels.shape, dtype=np.float32)
    for i, image in enumerate(pixels):
        data[i] = to_data_space(image, likelihood, image_stream(seed, image))
    return data


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
    grid = np.zeros((channels, rows * (height + padding) + padding, columns * (width + padding) + padding),
                    dtype=np.float32)
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[:, top:top + height, left:left + width] = images[index]
    return grid
