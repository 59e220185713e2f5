"""export/calibrate.py: vae-export calibrates on a training split and hashes the calibration, and
`python -m export.calibrate` adds one to an older export in place, all or nothing."""

import shutil

import numpy as np
import pytest

from export.calibrate import CalibrationError, held_out_split
from export.calibrate import main as calibrate_main
from model import data as data_module
from model.core.artifact import load_model_dir
from model.core.manifest import Manifest
from model.data import sha256_file
from tests.conftest import write_tiny_idx_dataset
from tests.unit.export.exports import file_hashes, without_calibration


def test_the_export_is_calibrated_on_a_training_split_and_the_calibration_is_hashed(exported):
    manifest = Manifest.read(exported / "manifest.json")
    spec = manifest.anomaly
    # 64 reference images resolve 1/64: the default false-positive rate is the first of 0.01, 0.02, ... above it
    assert spec is not None and spec.file == "anomaly.json" and spec.fpr_default == 0.02
    assert "1/64 is the finest rate they resolve" in spec.calibration["fpr_note"]
    assert sha256_file(exported / spec.file) == spec.sha256
    assert spec.calibration["split"] == "training" and spec.calibration["fit"] == [128, 192]
    assert spec.calibration["reference"] == [192, 256] and spec.calibration["dataset"] == "tiny"
    calibration = load_model_dir(exported).anomaly
    assert calibration is not None and len(calibration.reference) == 64
    assert calibration.score.name == spec.method and list(calibration.score.statistics) == spec.statistics


def test_calibrating_an_export_in_place_adds_the_calibration_and_keeps_every_other_file(
    exported, tmp_path, monkeypatch
):
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
    target = without_calibration(exported, tmp_path / "model")
    before = file_hashes(target)
    monkeypatch.setitem(data_module.DATASETS, "tiny", write_tiny_idx_dataset(tmp_path / "data", train=256))
    shutil.rmtree(tmp_path / "data")  # the training data is gone
    assert calibrate_main([str(target), "--data-dir", str(tmp_path / "data"), "--threads", "1"]) == 1
    assert "was not found" in capsys.readouterr().err
    assert file_hashes(target) == before and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_small_folders_held_out_images_are_all_references_and_a_tiny_one_is_refused_with_the_fix():
    train, held_out = np.arange(18.0)[:, None], 100 + np.arange(60.0)[:, None]
    fit, reference, described = held_out_split(held_out, train, count=10_000)  # enough held out: a third fits
    assert (len(fit), len(reference)) == (20, 40) and fit.min() >= 100 and described["split"] == "held out of training"
    fit, reference, described = held_out_split(held_out[:5], train, count=10_000)  # too few to fit on as well
    assert np.array_equal(reference, held_out[:5]) and np.array_equal(fit, train)
    assert "too few held out" in described["split"] and described["reference"] == [0, 5]
    with pytest.raises(CalibrationError, match="export with --no-calibrate"):
        held_out_split(held_out[:1], train, count=10_000)
    with pytest.raises(CalibrationError, match="add images to the folder"):
        held_out_split(held_out[:5], train[:4], count=10_000)
