"""`vae-export CHECKPOINT OUT_DIR`: ONNX graphs, manifest (model card), parity check, optional int8.

The command parses its flags into an `ExportConfig`; `export.writer` does the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from export import calibrate, parity
from export.config import ExportConfig
from export.files import ExportError
from export.writer import export_model, read_inputs
from model import checkpoint
from model.data import DataChecksumError, DataMissingError


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    defaults = ExportConfig(checkpoint=Path(), out_dir=Path())
    p = argparse.ArgumentParser(
        prog="vae-export", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--name", default=None, help="model name (default: <dataset>-vae)")
    p.add_argument("--version", default=defaults.version, help="model version")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="a vae-eval report folder: its metrics go in the manifest and it is copied beside the graphs",
    )
    p.add_argument("--int8", action="store_true", help="also write dynamically quantised int8 graphs")
    p.add_argument("--dataset", default=None, help="parity data (default: the checkpoint's dataset)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--parity-count", type=int, default=defaults.parity_count, help="test images and latents for the parity check"
    )
    p.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=defaults.calibrate,
        help="fit the anomaly score (POST /anomaly) on a validation split of the training data",
    )
    p.add_argument(
        "--calibration-count",
        type=int,
        default=defaults.calibration_count,
        help="training images in each half of the calibration split",
    )
    p.add_argument("--threads", type=int, default=defaults.threads)
    args = p.parse_args(argv)
    try:
        return ExportConfig(**vars(args))
    except ValueError as exc:
        p.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    torch.set_num_threads(config.threads)
    try:
        inputs = read_inputs(config)
    except (ExportError, checkpoint.CheckpointError, DataMissingError, DataChecksumError) as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 2
    try:
        manifest = export_model(config, inputs)
    except (parity.ParityError, ExportError, calibrate.CalibrationError, OSError) as exc:
        print(f"vae-export: {exc}", file=sys.stderr)
        return 1
    print(f"exported {manifest.name} {manifest.version} to {inputs.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
