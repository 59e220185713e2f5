"""What vae-train chooses for a folder of images where its flags leave the choice open, and why.

- The image shape: the folder's most common channels and size (a longer side above DEFAULT_MAX_SIDE
  is brought down to it), each side rounded to a multiple the architecture can halve.
- The architecture: the preset for that size (`model.config.ARCH_PRESETS`).
- The likelihood: Bernoulli when the images are close to binary (grey, and nearly every pixel near
  black or white), else a Gaussian on dequantised 8-bit pixels whose decoder outputs a scale per pixel
  for each z, so a textured or noisy region is not read as a badly reconstructed one.

Each choice comes with the sentence vae-train prints and stores in the checkpoint (and so in the
exported manifest's training section, `train_config.extra.defaults`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from model.config import DEFAULT_MAX_SIDE, arch_preset
from model.core.preprocess import ImageDecodeError, ImageTooLargeError, open_image
from model.data import FOLDER_MAX_PIXELS, IMAGE_SUFFIXES, DataFormatError, DataMissingError, image_channels

# Grey images with at least this share of pixels within NEAR_BINARY of 0 or 1 are scored as binary.
BINARY_SHARE = 0.9
NEAR_BINARY = 0.05


T = TypeVar("T")


@dataclass(frozen=True)
class Choice(Generic[T]):
    value: T
    reason: str


def survey(directory: Path) -> Counter[tuple[int, int, int]]:
    """(channels, height, width) of every image under `directory`, from the headers alone."""
    if not directory.is_dir():
        raise DataMissingError(f"Image folder {directory} does not exist. Point --data-dir at a folder of images.")
    shapes: Counter[tuple[int, int, int]] = Counter()
    for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            image = open_image(path.read_bytes(), max_pixels=FOLDER_MAX_PIXELS)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            raise DataFormatError(f"{path} cannot be used: {exc}. Fix or remove it.") from exc
        shapes[(image_channels(image.mode), image.height, image.width)] += 1
    if not shapes:
        raise DataMissingError(
            f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}. Point --data-dir at a folder of images."
        )
    return shapes


def default_shape(shapes: Counter[tuple[int, int, int]]) -> Choice[tuple[int, int, int]]:
    """The folder's most common shape, fitted to what the architecture takes; a (C, H, W) Choice."""
    (channels, height, width), count = shapes.most_common(1)[0]
    reason = f"the most common shape of the folder's images ({count} of {sum(shapes.values())})"
    side = max(height, width)
    if side > DEFAULT_MAX_SIDE:
        height, width = max(1, round(height * DEFAULT_MAX_SIDE / side)), max(1, round(width * DEFAULT_MAX_SIDE / side))
        reason += f", its longer side brought down to {DEFAULT_MAX_SIDE}"
    factor = arch_preset(height, width).factor
    fitted = (max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor))
    if fitted != (height, width):
        reason += f", rounded to multiples of {factor} (each of the model's stages halves the image)"
    shape = (channels, fitted[0], fitted[1])
    return Choice(shape, f"{'grey' if channels == 1 else 'RGB'} {fitted[0]}x{fitted[1]}: {reason}")


def binary_share(images: np.ndarray) -> float:
    """The share of pixel values within NEAR_BINARY of 0 or 1."""
    values = np.asarray(images)
    return float(np.mean((values <= NEAR_BINARY) | (values >= 1.0 - NEAR_BINARY)))


def default_likelihood(images: np.ndarray) -> Choice[tuple[str, str | None]]:
    """("bernoulli", None) for grey, nearly binary images; else ("gaussian", "decoder"). A (name, scale) Choice."""
    share = binary_share(images)
    colour = images.shape[1] != 1
    if not colour and share >= BINARY_SHARE:
        return Choice(
            ("bernoulli", None),
            f"bernoulli: the images are close to binary ({share:.0%} of pixels within {NEAR_BINARY:g} of black or "
            "white); pass --likelihood gaussian to model grey levels",
        )
    why = "colour images" if colour else f"grey levels ({share:.0%} of pixels near black or white)"
    return Choice(
        ("gaussian", "decoder"),
        f"gaussian with a per-pixel scale from the decoder: {why}; pass --likelihood bernoulli for binary images",
    )


def describe_preset(shape: tuple[int, int, int]) -> str:
    preset = arch_preset(shape[1], shape[2])
    return (
        f"the preset for images up to {preset.max_side} px: conv {' '.join(map(str, preset.conv_channels))}, "
        f"decoder {' '.join(map(str, preset.decoder_channels))}, hidden {' '.join(map(str, preset.hidden))}, "
        f"latent {preset.latent_dim}"
    )
