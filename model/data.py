"""Datasets: checksummed IDX files (Fashion-MNIST, MNIST) and folders of images."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageMode

from model.core.likelihoods import Likelihood
from model.core.preprocess import ImageDecodeError, ImageTooLargeError, PreprocessContract, image_to_array, open_image
from model.idx import read_idx

logger = logging.getLogger(__name__)

# A training folder is the user's own data, not an upload: only a guard against decompression bombs.
FOLDER_MAX_PIXELS = 40_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class DataMissingError(RuntimeError):
    """The data set is not where we looked. The message says how to get it."""


class DataChecksumError(RuntimeError):
    """A data file does not have its known SHA-256."""


class DataFormatError(DataMissingError):
    """A file in an image folder cannot be read as an image. The message names it."""


@dataclass(frozen=True)
class IdxDatasetSpec:
    name: str
    default_dir: str
    files: dict[str, tuple[str, str]]  # split part -> (file name, sha256)
    how_to_get: str


DATASETS: dict[str, IdxDatasetSpec] = {
    "fashion-mnist": IdxDatasetSpec(
        name="fashion-mnist",
        default_dir="/usr/share/datasets/fashion-mnist",
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            ),
        },
        how_to_get="On Debian or Ubuntu install it with `sudo apt-get install dataset-fashion-mnist`, "
        "which puts the original IDX files in /usr/share/datasets/fashion-mnist/.",
    ),
    "mnist": IdxDatasetSpec(
        name="mnist",
        default_dir="/usr/share/datasets/mnist",
        files={
            "train_images": (
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train_labels": (
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "test_images": (
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "test_labels": (
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        },
        how_to_get="Copy the four original gzipped IDX files of MNIST into one directory.",
    ),
}


@dataclass(frozen=True)
class Dataset:
    """Images as float32 (N, C, H, W) in [0, 1], with what identifies them. `calibration`: images held out
    of training for the anomaly calibration (a folder's; None for the IDX data sets, whose exports
    calibrate on the last training images as published)."""

    name: str
    train: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray | None
    checksums: dict[str, str]  # file name -> sha256
    source: str
    calibration: np.ndarray | None = None


# A folder's calibration split: this share of its images, at least MIN_CALIBRATION (when that leaves most
# of the images to train on) and at most MAX_CALIBRATION.
CALIBRATION_SPLIT = 0.2
MIN_CALIBRATION = 20
MAX_CALIBRATION = 4_000


def calibration_count(images: int, share: float) -> int:
    """How many of a folder's `images` (after its test split) are held out for the anomaly calibration."""
    if share <= 0:
        return 0
    wanted = max(round(share * images), MIN_CALIBRATION)
    if wanted > images // 2:  # never more than half: the model needs images to learn from
        wanted = min(round(share * images), images // 2)
    return min(wanted, MAX_CALIBRATION)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_data_dir(dataset: str, data_dir: str | None) -> Path:
    """Flag, then $VAE_DATA_DIR, then the dataset's default directory."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get("VAE_DATA_DIR"):
        return Path(os.environ["VAE_DATA_DIR"])
    if dataset in DATASETS:
        return Path(DATASETS[dataset].default_dir)
    raise DataMissingError(f"dataset {dataset!r} needs a directory: pass --data-dir or set VAE_DATA_DIR.")


def load_dataset(
    dataset: str,
    data_dir: str | None = None,
    contract: PreprocessContract | None = None,
    calibration_split: float = 0.0,
) -> Dataset:
    """Load a named IDX dataset, or `folder` (a directory of images; `calibration_split` of them held out
    of training for the anomaly calibration, `calibration_count`)."""
    directory = resolve_data_dir(dataset, data_dir)
    if dataset == "folder":
        return load_image_folder(directory, contract or PreprocessContract(), calibration_split=calibration_split)
    if dataset not in DATASETS:
        raise DataMissingError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS) + ['folder']}.")
    return load_idx_dataset(DATASETS[dataset], directory)


def load_idx_dataset(spec: IdxDatasetSpec, directory: Path) -> Dataset:
    missing = [name for name, _ in spec.files.values() if not (directory / name).is_file()]
    if missing:
        raise DataMissingError(
            f"The {spec.name} data set was not found in {directory} (missing: {', '.join(missing)}). "
            f"{spec.how_to_get} Or point at a directory holding the files with --data-dir DIR or "
            f"the VAE_DATA_DIR environment variable."
        )
    checksums: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    for part, (name, expected) in spec.files.items():
        path = directory / name
        actual = sha256_file(path)
        if actual != expected:
            raise DataChecksumError(
                f"{path} has SHA-256 {actual}, but the original {spec.name} file has {expected}. "
                "The file is corrupt or is not the original; reinstall or re-copy it."
            )
        checksums[name] = actual
        arrays[part] = read_idx(path)
    return Dataset(
        name=spec.name,
        train=_images(arrays["train_images"]),
        test=_images(arrays["test_images"]),
        test_labels=arrays["test_labels"].astype(np.int64),
        checksums=checksums,
        source=str(directory),
    )


def load_image_folder(
    directory: Path, contract: PreprocessContract, test_fraction: float = 0.1, calibration_split: float = 0.0
) -> Dataset:
    """A folder of images. With `train/` and `test/` subfolders those are the splits. Otherwise the
    test split is the `test_fraction` (at least one) of the images whose file contents have the
    smallest SHA-256: fixed by content alone, so vae-train, vae-eval and vae-export see the same
    split whatever the seed, file names or order, and identical files land in the same split.
    The calibration split is the next `calibration_count` training images in the same order."""
    if not directory.is_dir():
        raise DataMissingError(f"Image folder {directory} does not exist. Point --data-dir at a folder of images.")
    if (directory / "train").is_dir() and (directory / "test").is_dir():
        train, train_sums = read_image_folder(directory / "train", contract)
        test, test_sums = read_image_folder(directory / "test", contract)
        checksums = {f"train/{k}": v for k, v in train_sums.items()} | {f"test/{k}": v for k, v in test_sums.items()}
        rest = _by_digest(list(train_sums.values()))
    else:
        images, checksums = read_image_folder(directory, contract)
        if len(images) < 2:
            raise DataMissingError(f"Image folder {directory} holds fewer than 2 images; add more.")
        order = _by_digest(list(checksums.values()))  # `checksums` is in path order, like `images`
        n_test = min(len(images) - 1, max(1, round(test_fraction * len(images))))
        test, train, rest = images[order[:n_test]], images, order[n_test:]
    n_calibration = calibration_count(len(rest), calibration_split)
    calibration = train[rest[:n_calibration]] if n_calibration else None
    train = train[sorted(rest[n_calibration:])]
    return Dataset(
        name="folder",
        train=train,
        test=test,
        test_labels=None,
        checksums=checksums,
        source=str(directory),
        calibration=calibration,
    )


def _by_digest(digests: list[str]) -> list[int]:
    """Indices in the order of their SHA-256 (stable: identical files keep their path order)."""
    return sorted(range(len(digests)), key=digests.__getitem__)


def read_image_folder(directory: Path, contract: PreprocessContract) -> tuple[np.ndarray, dict[str, str]]:
    """Every image under `directory`, sorted by path, converted by the contract; logs what was converted."""
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataMissingError(
            f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}. Point --data-dir at a folder of images."
        )
    arrays, checksums, sources = [], {}, Counter()
    for path in paths:
        data = path.read_bytes()
        try:
            image = open_image(data, max_pixels=FOLDER_MAX_PIXELS)
            sources[(image_channels(image.mode), image.height, image.width)] += 1
            arrays.append(image_to_array(image, contract))
        except (ImageDecodeError, ImageTooLargeError) as exc:
            raise DataFormatError(f"{path} cannot be used: {exc}. Fix or remove it.") from exc
        checksums[str(path.relative_to(directory))] = hashlib.sha256(data).hexdigest()
    converted = {shape: n for shape, n in sources.items() if shape != contract.input_shape}
    if converted:
        logger.warning(conversion_note(directory, converted, contract.input_shape, len(paths)))
    return np.stack(arrays), checksums


def conversion_note(
    directory: Path, converted: dict[tuple[int, int, int], int], target: tuple[int, int, int], total: int
) -> str:
    """What was converted to `target` and the flags that would keep the most common shape as it is."""
    ranked = sorted(converted.items(), key=lambda kv: -kv[1])
    channels, height, width = common = ranked[0][0]
    size = f"{height}" if height == width else f"{height} {width}"
    keep = f"pass --channels {channels} --image-size {size} to keep"
    if len(ranked) == 1:
        return (
            f"converting {ranked[0][1]} of {total} images in {directory} from {_describe(common)} to "
            f"{_describe(target)}; {keep} them as they are"
        )
    kinds = ", ".join(f"{n} {_describe(shape)}" for shape, n in ranked)
    return (
        f"converting {sum(converted.values())} of {total} images in {directory} ({kinds}) to "
        f"{_describe(target)}; {keep} the most common ({_describe(common)}) as it is"
    )


def image_channels(mode: str) -> int:
    """1 for grey modes (L, 1, I, F, LA...), 3 for colour ones (RGB, RGBA, P, CMYK...)."""
    return 1 if ImageMode.getmode(mode).basemode == "L" else 3


def _describe(shape: tuple[int, int, int]) -> str:
    channels, height, width = shape
    return f"{'grey' if channels == 1 else 'RGB'} {height}x{width}"


def _images(raw: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]."""
    return (raw.astype(np.float32) / 255.0)[:, None, :, :]


def fixed_test_set(images: np.ndarray, likelihood: Likelihood, seed: int) -> np.ndarray:
    """The evaluation test set in the likelihood's data space, binarised (or dequantised) once with a
    fixed seed, so every evaluation sees the same bits: the literature's fixed binarised test set.
    One draw over the whole (N, C, H, W) array, so a prefix of the set gets the bits it has in the
    whole. Images scored as a user's own (`/elbo`, `vae-eval --images-dir`) are drawn one by one,
    keyed by their content, with `Likelihood.images_to_data_space`."""
    return likelihood.to_data_space(images, np.random.default_rng(seed))
