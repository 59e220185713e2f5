"""What one export is asked to do, as data: the CLI parses into an `ExportConfig`, the library takes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from export.calibrate import DEFAULT_COUNT as DEFAULT_CALIBRATION_COUNT  # images in each half of the split


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path  # a checkpoint written by vae-train or vae-average
    out_dir: Path  # replaced as a whole: new, empty, or an earlier export
    name: str | None = None  # the model's name; None: <dataset>-vae
    version: str = "1.0.0"
    report: Path | None = None  # a vae-eval report folder: its metrics go in the manifest, it is copied beside
    int8: bool = False  # also write dynamically quantised int8 graphs
    dataset: str | None = None  # parity and calibration data; None: the checkpoint's
    data_dir: str | None = None
    parity_count: int = 1000  # test images and latents for the parity check
    calibrate: bool = True  # fit the anomaly score (POST /anomaly) on a validation split of the training data
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("parity_count", "calibration_count", "threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (--{name.replace('_', '-')}), not {getattr(self, name)}")
