"""What vae-train chooses for a folder when its flags leave it open (model/folder_defaults.py), the calibration
split it holds out (model/data.py), and the default false-positive rate that split can resolve."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from model import folder_defaults
from model.config import ARCH_PRESETS, ModelConfig, arch_preset
from model.core.anomaly import default_fpr, fpr_note
from model.core.preprocess import PreprocessContract
from model.data import calibration_count, load_image_folder
from tests.conftest import write_png_folder


@pytest.mark.parametrize(
    "shapes, expected",
    [
        (Counter({(1, 28, 28): 5}), (1, 28, 28)),  # Fashion-MNIST-sized: as it is
        (Counter({(3, 32, 32): 9, (1, 28, 28): 2}), (3, 32, 32)),  # the most common wins
        (Counter({(3, 30, 30): 1}), (3, 32, 32)),  # rounded to a multiple of 4
        (Counter({(3, 100, 100): 1}), (3, 96, 96)),  # the 128 preset halves 4 times: multiples of 16
        (Counter({(1, 512, 384): 1}), (1, 128, 96)),  # brought down to 128, aspect kept
    ],
)
def test_the_default_shape_is_the_folders_most_common_fitted_to_the_architecture(shapes, expected):
    choice = folder_defaults.default_shape(shapes)
    assert choice.value == expected and "most common shape" in choice.reason
    _, height, width = expected
    ModelConfig(input_shape=expected, **_preset(height, width))  # and the preset takes it


def _preset(height: int, width: int) -> dict:
    preset = arch_preset(height, width)
    return {
        "conv_channels": preset.conv_channels,
        "decoder_channels": preset.decoder_channels,
        "hidden": preset.hidden,
        "latent_dim": preset.latent_dim,
    }


def test_the_presets_grow_with_the_image_and_the_smallest_is_the_fashion_mnist_models():
    default = ModelConfig()
    small = ARCH_PRESETS[0]
    assert (small.conv_channels, small.decoder_channels, small.hidden, small.latent_dim) == (
        default.conv_channels,
        default.decoder_channels,
        default.hidden,
        default.latent_dim,
    )
    assert [p.max_side for p in ARCH_PRESETS] == sorted(p.max_side for p in ARCH_PRESETS)
    assert [len(p.conv_channels) for p in ARCH_PRESETS] == [2, 3, 4, 5]
    assert arch_preset(28, 28) is small and arch_preset(64, 48).max_side == 64 and arch_preset(999, 1).max_side == 256


def test_the_likelihood_is_bernoulli_for_nearly_binary_grey_images_and_a_gaussian_otherwise():
    rng = np.random.default_rng(0)
    binary = (rng.random((20, 1, 8, 8)) > 0.7).astype(np.float32)
    grey = rng.uniform(0, 1, (20, 1, 8, 8)).astype(np.float32)
    colour = np.repeat(binary, 3, axis=1)
    choice = folder_defaults.default_likelihood(binary)
    assert choice.value == ("bernoulli", None) and "--likelihood gaussian" in choice.reason
    assert folder_defaults.default_likelihood(grey).value == ("gaussian", "decoder")
    assert folder_defaults.default_likelihood(colour).value == ("gaussian", "decoder")
    assert "colour images" in folder_defaults.default_likelihood(colour).reason


@pytest.mark.parametrize(
    "images, share, held_out",
    [(270, 0.2, 54), (45, 0.2, 20), (30, 0.2, 6), (100_000, 0.2, 4_000), (270, 0.0, 0), (270, 0.4, 108)],
)
def test_the_calibration_split_is_sized_to_the_data(images, share, held_out):
    assert calibration_count(images, share) == held_out


def test_a_folders_calibration_images_are_held_out_of_training_by_content(tmp_path):
    folder = write_png_folder(tmp_path / "images", count=100, size=8)
    contract = PreprocessContract(input_shape=(1, 8, 8))
    data = load_image_folder(folder, contract, calibration_split=0.2)
    whole = load_image_folder(folder, contract)
    assert data.calibration is not None and len(data.calibration) == 20
    assert len(data.test) == 10 and len(data.train) == 70 and whole.calibration is None
    np.testing.assert_array_equal(data.test, whole.test)  # the test split does not move
    train = {image.tobytes() for image in data.train}
    assert not any(image.tobytes() in train for image in data.calibration)
    # renamed files, same content: the same split
    for path in sorted(folder.iterdir()):
        path.rename(path.with_name("x" + path.name))
    again = load_image_folder(folder, contract, calibration_split=0.2)
    assert again.calibration is not None
    np.testing.assert_array_equal(np.sort(again.calibration, axis=0), np.sort(data.calibration, axis=0))


def test_the_survey_reads_headers_and_names_a_broken_file(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "b.png")
    assert folder_defaults.survey(tmp_path) == Counter({(3, 20, 40): 1, (1, 8, 8): 1})
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(folder_defaults.DataFormatError, match="c.png cannot be used"):
        folder_defaults.survey(tmp_path)


@pytest.mark.parametrize("references, fpr", [(10_000, 0.01), (100, 0.01), (99, 0.02), (36, 0.05), (10, 0.1), (3, 0.5)])
def test_the_default_false_positive_rate_is_the_finest_the_references_resolve(references, fpr):
    assert default_fpr(references) == fpr and fpr * references >= 1
    assert (fpr_note(references, fpr) is None) == (fpr == 0.01)
