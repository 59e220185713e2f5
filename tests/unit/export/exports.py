"""Shared by the export tests: a tiny model trained, evaluated and exported through the real commands
(`export_tiny_model`, behind the `exported` fixture of conftest.py), and helpers to copy, re-export and
compare export directories."""

import json
import shutil
from pathlib import Path

import pytest

from export.cli import main as export_main
from model import data as data_module
from model.config import ModelConfig, TrainConfig
from model.data import sha256_file
from model.evaluate import main as eval_main
from model.trainer import train
from tests.conftest import write_tiny_idx_dataset

MODEL = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,))
# A tiny two-level VAE (issue 33) with a mixture prior: served by tests/unit/service/routes/test_two_levels.py
# and the explorer's tests/browser/test_explorer_two_levels.py
TWO_LEVELS = ModelConfig(
    arch="conv",
    input_shape=(1, 8, 8),
    latent_dim=3,
    lower_latent_dim=4,
    hidden=(32,),
    conv_channels=(8,),
    prior="mog",
    prior_components=4,
)


def export_tiny_model(root: Path) -> Path:
    """vae-train for one epoch, vae-eval (k=10) and vae-export --int8 on a tiny data set; the model directory."""
    spec = write_tiny_idx_dataset(root / "data", size=8, train=256, test=64)
    saved = data_module.DATASETS.get("tiny")
    data_module.DATASETS["tiny"] = spec
    try:
        dataset = data_module.load_idx_dataset(spec, root / "data")
        train(
            MODEL,
            TrainConfig(dataset="tiny", data_dir=str(root / "data"), epochs=1, batch_size=32, threads=1),
            dataset,
            root / "run",
            progress=False,
        )
        assert (
            eval_main(
                [
                    str(root / "run" / "best.pt"),
                    "--k",
                    "10",
                    "--threads",
                    "1",
                    "--no-progress",
                    "--no-figures",
                    "--report",
                    str(root / "run" / "report"),
                ]
            )
            == 0
        )
        assert (
            export_main(
                [
                    str(root / "run" / "best.pt"),
                    str(root / "model"),
                    "--report",
                    str(root / "run" / "report"),
                    "--int8",
                    "--parity-count",
                    "64",
                    "--threads",
                    "1",
                ]
            )
            == 0
        )
    finally:
        if saved is None:
            data_module.DATASETS.pop("tiny")
    return root / "model"


def copy_model(exported, destination):
    shutil.copytree(exported, destination)
    return destination


def file_hashes(directory):
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def export_again(exported, tmp_path, monkeypatch, out, *flags):
    """vae-export of the fixture's checkpoint into `out`, with the tiny data set registered again."""
    spec = write_tiny_idx_dataset(tmp_path / "data", size=8, train=256, test=64)
    monkeypatch.setitem(data_module.DATASETS, "tiny", spec)
    return export_main(
        [
            str(exported.parent / "run" / "best.pt"),
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
            "--parity-count",
            "64",
            "--threads",
            "1",
            *flags,
        ]
    )


def without_calibration(exported, destination):
    """A copy of the export as vae-export wrote it before anomaly calibration existed."""
    target = copy_model(exported, destination)
    raw = json.loads((target / "manifest.json").read_text())
    raw.pop("anomaly")
    (target / "manifest.json").write_text(json.dumps(raw))
    (target / "anomaly.json").unlink()
    return target


def train_and_export(root: Path, config: ModelConfig, *flags: str, epochs: int = 1) -> tuple[Path, data_module.Dataset]:
    """`config` trained on the tiny data set for `epochs` and exported with `flags` by vae-export: the model
    directory, and the data set."""
    spec = write_tiny_idx_dataset(root / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(data_module.DATASETS, "tiny", spec)
        dataset = data_module.load_idx_dataset(spec, root / "data")
        settings = TrainConfig(dataset="tiny", data_dir=str(root / "data"), epochs=epochs, batch_size=32, threads=1)
        train(config, settings, dataset, root / "run", progress=False)
        data = ["--data-dir", str(root / "data"), "--threads", "1"]
        assert export_main([str(root / "run" / "best.pt"), str(root / "model"), *data, *flags]) == 0
    return root / "model", dataset
