"""export/writer.py: the manifest and its sections as vae-export writes them, and the export directory
replaced all or nothing (a failed parity check or rename leaves the old export as it was)."""

import json
import os
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from export import parity
from export.cli import main as export_main
from export.writer import move_into_place
from model import data as data_module
from model.average import main as average_main
from model.config import ModelConfig, TrainConfig
from model.core.artifact import load_model_dir
from model.core.manifest import SCHEMA_PATH, Manifest
from model.data import sha256_file
from model.trainer import train
from tests.conftest import write_tiny_idx_dataset
from tests.unit.export.exports import MODEL, copy_model, export_again, file_hashes


def test_manifest_validates_against_its_schema_and_hashes_match(exported):
    raw = json.loads((exported / "manifest.json").read_text())
    jsonschema.validate(raw, json.loads(SCHEMA_PATH.read_text()))
    manifest = Manifest.read(exported / "manifest.json")
    for info in (manifest.encoder, manifest.decoder, manifest.int8.encoder, manifest.int8.decoder):
        assert sha256_file(exported / info.file) == info.sha256
    assert sha256_file(exported / "checkpoint.pt") == manifest.checkpoint.sha256
    assert manifest.latent_dim == 4 and manifest.input.shape == [1, 8, 8]
    assert manifest.likelihood.outputs == ["logits"]
    assert manifest.metrics["iwae_k"] == 10 and manifest.metrics["command"][0] == "vae-eval"
    assert manifest.training["train_config"]["epochs"] == 1
    assert manifest.preprocessing["size"] == [8, 8]


def test_a_failed_parity_check_writes_nothing_and_keeps_the_old_export(exported, tmp_path, monkeypatch, capsys):
    target = copy_model(exported, tmp_path / "model")
    before = file_hashes(target)
    real = parity.max_abs_diff
    monkeypatch.setattr(parity, "max_abs_diff", lambda *args: {**real(*args), "decoder.logits": 3e-4})
    assert export_again(exported, tmp_path, monkeypatch, target, "--version", "9.0.0", "--int8") == 1
    assert "decoder.logits 3.00e-04" in capsys.readouterr().err
    assert file_hashes(target) == before
    assert Manifest.read(target / "manifest.json").version == "1.0.0"
    assert export_again(exported, tmp_path, monkeypatch, tmp_path / "fresh") == 1
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]  # no staging or aside directories


def test_re_export_over_the_model_with_its_own_report_replaces_it_whole(exported, tmp_path, monkeypatch):
    target = copy_model(exported, tmp_path / "model")
    before = file_hashes(target)
    (target / "stale.txt").write_text("from an earlier export")
    assert export_again(exported, tmp_path, monkeypatch, target, "--int8", "--report", str(target / "report")) == 0
    after = file_hashes(target)
    assert "stale.txt" not in after
    # the graphs are byte-identical on re-export; the report was copied from inside the replaced directory
    for name in ("encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "report/report.json"):
        assert after[name] == before[name]
    manifest = Manifest.read(target / "manifest.json")
    assert manifest.metrics["iwae_k"] == 10 and manifest.parity["images"] == 64
    assert load_model_dir(target, variant="int8").manifest == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]


def test_a_failed_rename_into_place_puts_the_old_export_back(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("old")
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "manifest.json").write_text("new")
    real = os.replace

    def failing_for_the_new_one(src, dst):
        if Path(src).name == "staging":
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing_for_the_new_one)
    with pytest.raises(OSError, match="No space"):
        move_into_place(tmp_path / "staging", tmp_path / "model")
    assert (tmp_path / "model" / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "staging"]
    monkeypatch.setattr(os, "replace", real)
    move_into_place(tmp_path / "staging", tmp_path / "model")
    assert (tmp_path / "model" / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_averaged_checkpoint_exports_with_the_record_of_what_it_averaged(tmp_path, monkeypatch):
    spec = write_tiny_idx_dataset(tmp_path / "data", size=8, train=64, test=32)
    monkeypatch.setitem(data_module.DATASETS, "tiny", spec)
    dataset = data_module.load_idx_dataset(spec, tmp_path / "data")
    train(
        MODEL,
        TrainConfig(dataset="tiny", data_dir=str(tmp_path / "data"), epochs=2, batch_size=32, threads=1),
        dataset,
        tmp_path / "run",
        progress=False,
        keep_epochs=True,
    )
    assert (
        average_main(
            [
                str(tmp_path / "run" / "epoch-001.pt"),
                str(tmp_path / "run" / "epoch-002.pt"),
                "--out",
                str(tmp_path / "run" / "average.pt"),
                "--no-validate",
            ]
        )
        == 0
    )
    assert (
        export_main(
            [str(tmp_path / "run" / "average.pt"), str(tmp_path / "model"), "--parity-count", "32", "--threads", "1"]
        )
        == 0
    )
    training = Manifest.read(tmp_path / "model" / "manifest.json").training
    assert training["averaged"]["epochs"] == [1, 2] and training["epoch"] == 2
    assert training["averaged"]["command"][:2] == ["vae-average", str(tmp_path / "run" / "epoch-001.pt")]


def test_a_gaussian_model_exports_mean_and_log_scale(tmp_path, monkeypatch):
    spec = write_tiny_idx_dataset(tmp_path / "data", size=8, train=64, test=32)
    monkeypatch.setitem(data_module.DATASETS, "tiny", spec)
    config = ModelConfig(
        arch="mlp", decoder="mlp", input_shape=(1, 8, 8), latent_dim=3, hidden=(16,), likelihood="gaussian"
    )
    dataset = data_module.load_idx_dataset(spec, tmp_path / "data")
    train(
        config,
        TrainConfig(dataset="tiny", epochs=1, batch_size=32, threads=1),
        dataset,
        tmp_path / "run",
        progress=False,
    )
    assert (
        export_main(
            [str(tmp_path / "run" / "best.pt"), str(tmp_path / "model"), "--parity-count", "32", "--threads", "1"]
        )
        == 0
    )
    manifest = Manifest.read(tmp_path / "model" / "manifest.json")
    assert manifest.likelihood.outputs == ["mean", "log_scale"] and manifest.metrics == {"evaluated": False}
    assert list(manifest.decoder.outputs) == ["mean", "log_scale"]
    mean, log_scale = load_model_dir(tmp_path / "model").decode(np.zeros((2, 3), dtype=np.float32))
    assert mean.shape == log_scale.shape == (2, 1, 8, 8) and mean.min() >= 0 and mean.max() <= 1
    # the manifest records the scale the graph outputs, floored at the quantisation limit
    parameters = manifest.likelihood.parameters
    assert parameters["sigma_mean"] == pytest.approx(float(np.exp(log_scale).mean()), rel=1e-5)
    assert parameters["log_sigma_floor"] == pytest.approx(-6.787, abs=1e-3)
