import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from model.data import (DATASETS, DataChecksumError, DataMissingError, load_dataset, load_idx_dataset,
                        load_image_folder, resolve_data_dir)
from model.preprocess import PreprocessContract
from tests.conftest import write_tiny_idx_dataset


def test_loads_idx_files_and_reports_their_checksums(tmp_path):
    spec = write_tiny_idx_dataset(tmp_path, size=8, train=20, test=5)
    data = load_idx_dataset(spec, tmp_path)
    assert data.train.shape == (20, 1, 8, 8) and data.test.shape == (5, 1, 8, 8)
    assert data.train.dtype == np.float32 and 0.0 <= data.train.min() and data.train.max() <= 1.0
    assert data.checksums == {name: sha for name, sha in spec.files.values()}


def test_checksum_mismatch_is_refused(tmp_path):
    spec = write_tiny_idx_dataset(tmp_path, size=8, train=20, test=5)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the original")
    with pytest.raises(DataChecksumError, match="SHA-256"):
        load_idx_dataset(spec, tmp_path)


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(DataMissingError) as info:
        load_dataset("fashion-mnist", str(tmp_path))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message and "VAE_DATA_DIR" in message


def test_data_dir_comes_from_flag_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    assert str(resolve_data_dir("fashion-mnist", None)) == DATASETS["fashion-mnist"].default_dir
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path))
    assert resolve_data_dir("fashion-mnist", None) == tmp_path
    assert str(resolve_data_dir("fashion-mnist", "/x")) == "/x"


def test_image_folder_is_converted_by_the_contract_and_split(tmp_path):
    for i in range(10):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    data = load_image_folder(tmp_path, PreprocessContract(input_shape=(1, 28, 28)), seed=0)
    assert data.train.shape == (9, 1, 28, 28) and data.test.shape == (1, 1, 28, 28)
    assert len(data.checksums) == 10


def test_empty_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataMissingError, match="No images"):
        load_image_folder(tmp_path, PreprocessContract())


def test_vae_train_without_data_prints_a_paragraph_not_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "model.train", "--data-dir", str(tmp_path / "nowhere")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "Traceback" not in result.stderr
