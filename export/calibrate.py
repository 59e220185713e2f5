"""Anomaly calibration of an exported model, from a validation split of its training data.

`vae-export` calibrates every new export. An export made before that is calibrated in place, its
graphs untouched, with

    python -m export.calibrate artifacts/fashion-mnist-vae/2.0.0

which writes `anomaly.json` and the manifest's `anomaly` entry into a copy of the directory and
renames it into place only once the service's loader accepts it: all or nothing, as vae-export.

The score is fitted on one part of the split and its reference scores (percentiles, thresholds)
come from the other, so the reference is not flattered by the fit. The test set is never used. A
folder trained by vae-train holds its calibration images out of training (model/data.py): the split
is those, a third to fit and two thirds for the reference, as the reference decides which
false-positive rates the answer can resolve. The anomaly maps are calibrated on the same two parts
(model/core/anomaly_map.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from model.core import anomaly, anomaly_map
from model.core.anomaly import Calibration, TypicalityScore
from model.core.artifact import ModelLoadError, OnnxVAE, load_model_dir
from model.core.manifest import AnomalySpec, Manifest
from model.core.preprocess import PreprocessContract
from model.data import DataChecksumError, DataMissingError, load_dataset, sha256_file

# Chosen by `python -m bench.anomaly` on its tuning sets: its candidate "typicality_gaussian_4"
# (bench/results/anomaly.json, "chosen"; a unit test keeps the two in step).
METHOD = "typicality"
STATISTICS = ("elbo", "kl", "latent_norm", "complexity_bits")
ESTIMATOR = "gaussian"
COST = (
    "one encoder and one decoder call per image, as POST /elbo?k=1, plus PNG compressions of the image; "
    "its time against the /elbo?k=1 scoring is measured by python -m bench.anomaly (cost.ratio in "
    "bench/results/anomaly.json)"
)
DEFAULT_COUNT = 10_000  # images in each half of the split
MIN_COUNT = 10  # below this a percentile means little; a smoke-test export still gets a working /anomaly
MIN_REFERENCE = 2  # held-out reference images below which a folder is not calibrated (default fpr 0.5 at 2)
MAP_COUNT = 2_000  # images of each part the anomaly maps are calibrated on: the maps cost `samples` decodes each

logger = logging.getLogger("vae-export")


class CalibrationError(RuntimeError):
    """The model cannot be calibrated; nothing was written."""


def validation_split(train: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The last 2 * count training images (at most half of them): the first half fits the score, the
    second gives the reference scores. (fit, reference, its description)"""
    count = min(count, len(train) // 4)
    if count < MIN_COUNT:
        raise CalibrationError(
            f"{len(train)} training images are too few to calibrate (at least {4 * MIN_COUNT} "
            "needed); export with --no-calibrate"
        )
    start = len(train) - 2 * count
    description = {
        "split": "training",
        "fit": [start, start + count],
        "reference": [start + count, len(train)],
        "images": 2 * count,
    }
    return train[start : start + count], train[start + count :], description


def held_out_split(
    held_out: np.ndarray, train: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Images held out of training for calibration: the first third fits the score (at least MIN_COUNT),
    the rest (at most `count` each) give the reference scores. A folder too small to hold out 2 x MIN_COUNT
    still gets a calibration: every held-out image (at least MIN_REFERENCE) is a reference, and the score
    is fitted on the training images (at most `count`, the last), with a warning. (fit, reference, its description)"""
    if len(held_out) < 2 * MIN_COUNT:
        fit = min(count, len(train))
        if len(held_out) < MIN_REFERENCE or fit < MIN_COUNT:
            raise CalibrationError(
                f"{len(held_out)} held-out calibration images and {len(train)} training images are too few to "
                f"calibrate (at least {MIN_REFERENCE} held out and {MIN_COUNT} trained on): add images to the "
                "folder, or export with --no-calibrate"
            )
        logger.warning(
            "only %d images were held out for the calibration: all of them give the reference scores, and the "
            "score is fitted on the last %d training images; add images to the folder for a calibration on "
            "held-out images alone",
            len(held_out),
            fit,
        )
        description = {
            "split": "reference held out of training, score fitted on training images (too few held out)",
            "fit": [len(train) - fit, len(train)],
            "reference": [0, len(held_out)],
            "images": fit + len(held_out),
        }
        return train[len(train) - fit :], held_out, description
    fit = min(count, max(MIN_COUNT, len(held_out) // 3))
    reference = min(count, len(held_out) - fit)
    description = {
        "split": "held out of training",
        "fit": [0, fit],
        "reference": [fit, fit + reference],
        "images": fit + reference,
    }
    return held_out[:fit], held_out[fit : fit + reference], description


def fit_score(
    name: str, stats: dict[str, np.ndarray], statistics: tuple[str, ...] = STATISTICS, estimator: str = ESTIMATOR
) -> anomaly.Score:
    if name == "likelihood":
        return anomaly.LikelihoodScore()
    if name == "complexity":
        return anomaly.ComplexityScore()
    return TypicalityScore.fit(stats, statistics, estimator)


def scorer(model: OnnxVAE) -> Any:
    """What the statistics and maps are computed with: the graphs, or a two-level model's levels (every
    level's terms in its ELBO and draws), as the service's `Engine.scorer`."""
    return model.levels if model.levels is not None else model


def batched_statistics(
    model: OnnxVAE, pixels: np.ndarray, seed: int, binarize_seed: int, batch: int = 512
) -> dict[str, np.ndarray]:
    parts = [
        anomaly.statistics(scorer(model), model.likelihood, pixels[i : i + batch], seed, binarize_seed)
        for i in range(0, len(pixels), batch)
    ]
    return {name: np.concatenate([part[name] for part in parts]) for name in anomaly.STATISTICS}


def calibrate(
    model: OnnxVAE,
    train: np.ndarray,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    binarize_seed: int = 0,
    held_out: np.ndarray | None = None,
) -> Calibration:
    """The score and the map calibration, on `held_out` images when the data set holds some out of
    training, else on the last training images (Fashion-MNIST's exports, as published)."""
    if held_out is not None and len(held_out):
        fit_images, reference_images, description = held_out_split(held_out, train, count)
    else:
        fit_images, reference_images, description = validation_split(train, count)
    score = fit_score(METHOD, batched_statistics(model, fit_images, seed, binarize_seed))
    reference = batched_statistics(model, reference_images, seed, binarize_seed)
    maps = None
    if model.likelihood.name != "none":
        fit_terms = anomaly_map.pixel_terms(scorer(model), model.likelihood, fit_images[:MAP_COUNT], seed)
        reference_terms = anomaly_map.pixel_terms(scorer(model), model.likelihood, reference_images[:MAP_COUNT], seed)
        maps = anomaly_map.MapCalibration.fit(fit_terms, reference_terms)
    return Calibration.build(score, reference, seed, binarize_seed, description, maps)


def add_calibration(directory: Path, manifest: Manifest, calibration: Calibration) -> Manifest:
    """Write anomaly.json into `directory`; the manifest that lists it (not yet written)."""
    path = directory / anomaly.CALIBRATION_FILE
    path.write_text(calibration.to_json())
    references = len(calibration.reference)
    fpr = anomaly.default_fpr(references)
    note = anomaly.fpr_note(references, fpr)
    if note:
        logger.warning("%s %s: %s", manifest.name, manifest.version, note)
    maps = calibration.map
    spec = AnomalySpec(
        file=path.name,
        sha256=sha256_file(path),
        method=calibration.score.name,
        statistics=list(calibration.score.statistics),
        cost=COST,
        fpr_default=fpr,
        calibration={
            **calibration.data,
            "dataset": manifest.training.get("dataset"),
            "seed": calibration.seed,
            "binarize_seed": calibration.binarize_seed,
            "reference_images": references,
            "smallest_fpr": calibration.smallest_fpr(),
            **({"fpr_note": note} if note else {}),
            **(
                {
                    "map": {
                        "method": anomaly_map.MAP_NOTE,
                        "samples": maps.samples,
                        "smoothing_pixels": maps.smoothing,
                        "positional": maps.positional,
                        "reference_images": maps.images,
                    }
                }
                if maps is not None
                else {}
            ),
        },
    )
    return manifest.model_copy(update={"anomaly": spec})


def calibrate_in_place(directory: Path, count: int, data_dir: str | None, threads: int) -> Manifest:
    """Calibrate an export's copy and rename it over the export; the graphs' bytes are copied as they are."""
    from export.files import move_into_place  # the same all-or-nothing rename as vae-export

    model = load_model_dir(directory, threads=threads)
    manifest = model.manifest
    dataset = manifest.training.get("dataset")
    if not dataset:
        raise CalibrationError(f"{directory}/manifest.json names no training dataset to calibrate on")
    train_config = manifest.training.get("train_config", {})
    data = load_dataset(
        dataset,
        data_dir or train_config.get("data_dir"),
        PreprocessContract.from_dict(manifest.preprocessing),
        calibration_split=float(train_config.get("calibration_split", 0.0)),
    )
    calibration = calibrate(
        model,
        data.train,
        count,
        binarize_seed=int(train_config.get("test_binarize_seed", 0)),
        held_out=data.calibration,
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        os.chmod(staging, directory.stat().st_mode & 0o777)
        shutil.copytree(directory, staging, dirs_exist_ok=True)
        manifest = add_calibration(staging, manifest, calibration)
        manifest.write(staging / "manifest.json")
        load_model_dir(staging, threads=threads)  # what is moved into place is what the service loads
        move_into_place(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m export.calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model_dir", help="a directory written by vae-export")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help="training images in each half of the split")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    directory = Path(args.model_dir)
    directory = directory.resolve() if directory.is_symlink() else directory
    try:
        manifest = calibrate_in_place(directory, args.count, args.data_dir, args.threads)
    except (CalibrationError, ModelLoadError, DataMissingError, DataChecksumError, OSError) as exc:
        print(f"export.calibrate: {exc}", file=sys.stderr)
        return 1
    spec = manifest.anomaly  # always listed by add_calibration
    method = "" if spec is None else f": {spec.method} ({', '.join(spec.statistics)})"
    print(f"calibrated {manifest.name} {manifest.version} in {directory}{method}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
