"""Round trip: train a tiny model, export it, load it in onnxruntime through the service's loader."""

import json
import os
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import onnx
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
from model.evaluate import main as eval_main
from model.train import train
from tests.conftest import write_tiny_idx_dataset

MODEL = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=4, hidden=(32,), conv_channels=(8,))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
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


def test_graphs_are_checked_deterministic_and_batch_dynamic(exported):
    for name, inputs, outputs in (("encoder.onnx", ["image"], ["mean", "logvar"]), ("decoder.onnx", ["z"], ["logits"])):
        proto = onnx.load(exported / name)
        onnx.checker.check_model(proto, full_check=True)
        assert [i.name for i in proto.graph.input] == inputs and [o.name for o in proto.graph.output] == outputs
        assert not [n for n in proto.graph.node if n.op_type.startswith("Random")]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["latent_dim"] == "4" and meta["likelihood"] == "bernoulli"


def test_parity_figures_are_recorded_and_within_tolerance(exported):
    manifest = Manifest.read(exported / "manifest.json")
    assert manifest.parity["images"] == 64
    assert max(manifest.parity["max_abs_diff"].values()) <= 1e-4
    assert max(manifest.parity["batch_max_abs_diff"].values()) <= 1e-4
    assert set(manifest.int8.speed) and set(manifest.int8.parity) == set(manifest.parity["max_abs_diff"])


def test_onnxruntime_runs_the_loaded_graphs(exported):
    model = load_model_dir(exported)
    mean, logvar = model.encode(np.zeros((3, 1, 8, 8), dtype=np.float32))
    assert mean.shape == logvar.shape == (3, 4)
    (logits,) = model.decode(mean)
    assert logits.shape == (3, 1, 8, 8)


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


def test_export_refuses_to_replace_a_directory_it_did_not_write(exported, tmp_path, monkeypatch, capsys):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    assert export_again(exported, tmp_path, monkeypatch, tmp_path / "home") == 2
    assert "not a directory written by vae-export" in capsys.readouterr().err
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


def test_parity_check_fails_beyond_tolerance():
    with pytest.raises(parity.ParityError, match="decoder.logits"):
        parity.check({"decoder.logits": 2e-4}, {"encoder": 0.0})
    with pytest.raises(parity.ParityError, match="batch.encoder nan"):
        parity.check({"decoder.logits": 0.0}, {"encoder": float("nan")})
    parity.check({"decoder.logits": 5e-5}, {"encoder": 0.0})


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


def test_the_export_is_calibrated_on_a_training_split_and_the_calibration_is_hashed(exported):
    manifest = Manifest.read(exported / "manifest.json")
    spec = manifest.anomaly
    assert spec is not None and spec.file == "anomaly.json" and spec.fpr_default == 0.01
    assert sha256_file(exported / spec.file) == spec.sha256
    assert spec.calibration["split"] == "training" and spec.calibration["fit"] == [128, 192]
    assert spec.calibration["reference"] == [192, 256] and spec.calibration["dataset"] == "tiny"
    calibration = load_model_dir(exported).anomaly
    assert calibration is not None and len(calibration.reference) == 64
    assert calibration.score.name == spec.method and list(calibration.score.statistics) == spec.statistics


def without_calibration(exported, destination):
    """A copy of the export as vae-export wrote it before anomaly calibration existed."""
    target = copy_model(exported, destination)
    raw = json.loads((target / "manifest.json").read_text())
    raw.pop("anomaly")
    (target / "manifest.json").write_text(json.dumps(raw))
    (target / "anomaly.json").unlink()
    return target


def test_calibrating_an_export_in_place_adds_the_calibration_and_keeps_every_other_file(
    exported, tmp_path, monkeypatch
):
    from export.calibrate import main as calibrate_main

    target = without_calibration(exported, tmp_path / "model")
    assert load_model_dir(target).anomaly is None  # an old export still loads
    before = file_hashes(target)
    spec = write_tiny_idx_dataset(tmp_path / "data", size=8, train=256, test=64)
    monkeypatch.setitem(data_module.DATASETS, "tiny", spec)
    assert calibrate_main([str(target), "--count", "20", "--data-dir", str(tmp_path / "data"), "--threads", "1"]) == 0
    after = file_hashes(target)
    assert {name: after[name] for name in before if name != "manifest.json"} == {
        name: digest for name, digest in before.items() if name != "manifest.json"
    }
    manifest = Manifest.read(target / "manifest.json")
    assert manifest.anomaly.sha256 == after["anomaly.json"] and manifest.anomaly.calibration["fit"] == [216, 236]
    assert manifest.model_copy(update={"anomaly": None}) == Manifest.read(exported / "manifest.json").model_copy(
        update={"anomaly": None}
    )
    assert load_model_dir(target).anomaly is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model"]  # no staging directory left


def test_a_failed_calibration_leaves_the_export_as_it_was(exported, tmp_path, monkeypatch, capsys):
    from export.calibrate import main as calibrate_main

    target = without_calibration(exported, tmp_path / "model")
    before = file_hashes(target)
    monkeypatch.setitem(data_module.DATASETS, "tiny", write_tiny_idx_dataset(tmp_path / "data", train=256))
    shutil.rmtree(tmp_path / "data")  # the training data is gone
    assert calibrate_main([str(target), "--data-dir", str(tmp_path / "data"), "--threads", "1"]) == 1
    assert "was not found" in capsys.readouterr().err
    assert file_hashes(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
