"""Shared fixtures: tiny synthetic IDX datasets and tiny trained models, so tests need no download."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from model.data import IdxDatasetSpec
from model.idx import write_idx

REPO = Path(__file__).resolve().parent.parent


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
    """Bright axis-aligned rectangles on black: learnable structure, (N, size, size) uint8."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size), dtype=np.uint8)
    for image in images:
        top, left = rng.integers(0, size // 2, 2)
        height, width = rng.integers(size // 4, size // 2 + 1, 2)
        image[top : top + height, left : left + width] = rng.integers(180, 256)
    return images


def write_tiny_idx_dataset(directory: Path, size: int = 8, train: int = 512, test: int = 64) -> IdxDatasetSpec:
    directory.mkdir(parents=True, exist_ok=True)
    parts = {
        "train_images": ("train-images-idx3-ubyte.gz", synthetic_images(train, size, 1)),
        "train_labels": ("train-labels-idx1-ubyte.gz", np.zeros(train, dtype=np.uint8)),
        "test_images": ("t10k-images-idx3-ubyte.gz", synthetic_images(test, size, 2)),
        "test_labels": ("t10k-labels-idx1-ubyte.gz", np.arange(test, dtype=np.uint8) % 10),
    }
    files = {}
    for part, (name, array) in parts.items():
        write_idx(directory / name, array)
        files[part] = (name, hashlib.sha256((directory / name).read_bytes()).hexdigest())
    return IdxDatasetSpec(name="tiny", default_dir=str(directory), files=files, how_to_get="(test data)")


def write_png_folder(directory: Path, count: int, size: int, rgb: bool = False, seed: int = 3) -> Path:
    """`count` PNGs of the synthetic rectangles, grey, or coloured (a random tint per image) with `rgb`."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    tints = np.random.default_rng(seed).uniform(0.2, 1.0, (count, 3))
    for index, image in enumerate(synthetic_images(count, size, seed)):
        pixels = (image[:, :, None] * tints[index]).astype(np.uint8) if rgb else image
        Image.fromarray(pixels).save(directory / f"{index:04d}.png")
    return directory


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    from model.data import load_idx_dataset

    directory = tmp_path_factory.mktemp("tiny-data")
    spec = write_tiny_idx_dataset(directory)
    return load_idx_dataset(spec, directory)
