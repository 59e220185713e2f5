import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import PreprocessContract, bytes_to_array
from model.data import (
    DATASETS,
    DataChecksumError,
    DataFormatError,
    DataMissingError,
    load_dataset,
    load_idx_dataset,
    load_image_folder,
    resolve_data_dir,
)
from tests.conftest import write_png_folder, write_tiny_idx_dataset


def test_loads_idx_files_and_reports_their_checksums(tmp_path):
    spec = write_tiny_idx_dataset(tmp_path, size=8, train=20, test=5)
    data = load_idx_dataset(spec, tmp_path)
    assert data.train.shape == (20, 1, 8, 8) and data.test.shape == (5, 1, 8, 8)
    assert data.train.dtype == np.float32 and data.train.min() >= 0.0 and data.train.max() <= 1.0
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


def test_image_folder_is_converted_by_the_contract_and_split(tmp_path, caplog):
    for i in range(10):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="model.data"):
        data = load_image_folder(tmp_path, PreprocessContract(input_shape=(1, 28, 28)))
    assert data.train.shape == (9, 1, 28, 28) and data.test.shape == (1, 1, 28, 28)
    assert len(data.checksums) == 10
    assert [r.getMessage() for r in caplog.records] == [
        f"converting 10 of 10 images in {tmp_path} from RGB 30x40 to grey 28x28; "
        "pass --channels 3 --image-size 30 40 to keep them as they are"
    ]


def test_the_conversion_note_counts_each_kind_and_names_the_most_common(tmp_path, caplog):
    write_png_folder(tmp_path, count=5, size=32, rgb=True)
    for i in range(2):
        Image.new("L", (28, 28), 200).save(tmp_path / f"grey-{i}.png")  # already the target: not converted
    Image.new("L", (16, 16), 100).save(tmp_path / "small.png")
    with caplog.at_level(logging.WARNING, logger="model.data"):
        data = load_image_folder(tmp_path, PreprocessContract(input_shape=(1, 28, 28)))
    assert len(data.train) + len(data.test) == 8
    assert [r.getMessage() for r in caplog.records] == [
        f"converting 6 of 8 images in {tmp_path} (5 RGB 32x32, 1 grey 16x16) to grey 28x28; "
        "pass --channels 3 --image-size 32 to keep the most common (RGB 32x32) as it is"
    ]


def test_an_rgb_folder_keeps_its_colour_and_size_when_asked(tmp_path, caplog):
    write_png_folder(tmp_path, count=10, size=32, rgb=True)
    with caplog.at_level(logging.WARNING, logger="model.data"):
        data = load_image_folder(tmp_path, PreprocessContract(input_shape=(3, 32, 32)))
    assert data.train.shape == (9, 3, 32, 32) and not caplog.records
    lit = data.train[:, :, data.train.max(axis=(0, 1)) > 0]  # (N, 3, lit pixels)
    assert not np.allclose(lit[:, 0], lit[:, 1])  # the tints survive: not grey


def test_the_folder_split_depends_on_the_contents_only(tmp_path):
    one, two = write_png_folder(tmp_path / "one", count=30, size=8), tmp_path / "two"
    two.mkdir()
    for index, path in enumerate(sorted(one.iterdir())):  # the same files, renamed into another order
        (two / f"{(7 * index) % 30:02d}-renamed.png").write_bytes(path.read_bytes())
    contract = PreprocessContract(input_shape=(1, 8, 8))
    a, b = load_image_folder(one, contract), load_image_folder(two, contract)
    assert a.test.shape == (3, 1, 8, 8) and a.train.shape == (27, 1, 8, 8)
    as_set = lambda images: sorted(image.tobytes() for image in images)  # noqa: E731
    assert as_set(a.test) == as_set(b.test) and as_set(a.train) == as_set(b.train)
    smallest = sorted(a.checksums, key=a.checksums.get)[:3]
    expected = [bytes_to_array((one / name).read_bytes(), contract) for name in smallest]
    assert as_set(a.test) == as_set(expected)


def test_an_undecodable_file_in_a_folder_is_named(tmp_path):
    write_png_folder(tmp_path, count=3, size=8)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(
        DataFormatError,
        match="broken.png cannot be used: the bytes are not a decodable PNG, JPEG, WebP, BMP, GIF or TIFF image",
    ):
        load_image_folder(tmp_path, PreprocessContract(input_shape=(1, 8, 8)))


def test_empty_image_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataMissingError, match="No images"):
        load_image_folder(tmp_path, PreprocessContract())


def test_vae_train_without_data_prints_a_paragraph_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model.train", "--data-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "Traceback" not in result.stderr
