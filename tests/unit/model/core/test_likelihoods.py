"""Each likelihood object: numpy and torch twins agree, data spaces, pixel means, offsets."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.core import likelihoods
from model.core.likelihoods import LIKELIHOODS
from tests.conftest import REPO


def params_for(likelihood, rng, count=3, shape=(1, 4, 4)):
    if likelihood.name == "bernoulli":
        return (rng.normal(size=(count, *shape)).astype(np.float32),)
    return (rng.random((count, *shape), dtype=np.float32), rng.normal(-2, 0.3, (count, *shape)).astype(np.float32))


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_numpy_and_torch_log_probabilities_agree(name):
    likelihood = LIKELIHOODS[name]
    rng = np.random.default_rng(0)
    params = params_for(likelihood, rng)
    x = likelihood.to_data_space(rng.random(params[0].shape, dtype=np.float32), rng)
    expected = likelihood.torch_log_prob(torch.from_numpy(x), tuple(torch.from_numpy(p) for p in params)).numpy()
    flat = tuple(p.reshape(len(p), -1) for p in params)
    np.testing.assert_allclose(likelihood.log_prob(x.reshape(len(x), -1), flat), expected, rtol=1e-5)


def test_bernoulli_against_a_hand_computed_value():
    logits = np.array([[0.0, 2.0]], dtype=np.float32)
    x = np.array([1.0, 0.0], dtype=np.float32)
    expected = math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2.0)))
    assert LIKELIHOODS["bernoulli"].log_prob(x, (logits,))[0] == pytest.approx(expected, rel=1e-6)


def test_gaussian_against_a_hand_computed_value_and_its_8bit_offset():
    gaussian = LIKELIHOODS["gaussian"]
    x = np.array([0.5], dtype=np.float32)
    mean, log_scale = np.array([[0.25]], dtype=np.float32), np.array([[math.log(0.5)]], dtype=np.float32)
    expected = -0.5 * 0.5**2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    assert gaussian.log_prob(x, (mean, log_scale))[0] == pytest.approx(expected, rel=1e-6)
    assert gaussian.discrete_offset(784) == pytest.approx(-784 * math.log(256))
    assert LIKELIHOODS["bernoulli"].discrete_offset(784) == 0.0


def test_data_spaces():
    rng = np.random.default_rng(1)
    binary = np.array([0.0, 1.0, 1.0, 0.0], dtype=np.float32)
    assert np.array_equal(LIKELIHOODS["bernoulli"].to_data_space(binary, rng), binary)  # binary stays binary
    grey = np.full(10_000, 0.3, dtype=np.float32)
    assert LIKELIHOODS["bernoulli"].to_data_space(grey, rng).mean() == pytest.approx(0.3, abs=0.02)
    dequantised = LIKELIHOODS["gaussian"].to_data_space(grey, rng)
    level = round(0.3 * 255)
    assert np.all((dequantised >= level / 256) & (dequantised < (level + 1) / 256))


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_torch_data_space_matches_the_numpy_rule(name):
    likelihood = LIKELIHOODS[name]
    pixels = torch.full((2000,), 0.6)
    drawn = likelihood.torch_to_data_space(pixels, torch.Generator().manual_seed(0)).numpy()
    reference = likelihood.to_data_space(pixels.numpy(), np.random.default_rng(0))
    assert drawn.mean() == pytest.approx(reference.mean(), abs=0.03)


def test_pixel_means_are_in_the_unit_interval():
    rng = np.random.default_rng(2)
    for likelihood in LIKELIHOODS.values():
        params = params_for(likelihood, rng)
        params = (params[0] * 10,) + params[1:]
        mean = likelihood.pixel_mean(params)
        assert mean.dtype == np.float32 and mean.shape == params[0].shape and 0 <= mean.min() <= mean.max() <= 1


def test_pixel_means_of_bernoulli_logits_are_sigmoids():
    means = LIKELIHOODS["bernoulli"].pixel_mean((np.array([[[[0.0, 100.0]]]], dtype=np.float32),))
    np.testing.assert_allclose(means, [[[[0.5, 1.0]]]])


def test_binary_images_pass_binarisation_unchanged():
    pixels = (np.random.default_rng(0).random((1, 28, 28)) < 0.5).astype(np.float32)
    np.testing.assert_array_equal(LIKELIHOODS["bernoulli"].to_data_space(pixels, np.random.default_rng(1)), pixels)


def test_dequantisation_stays_inside_each_pixels_bin():
    pixels = np.array([0.0, 1.0, 128 / 255], dtype=np.float32)
    out = LIKELIHOODS["gaussian"].to_data_space(pixels, np.random.default_rng(0))
    assert (out >= np.array([0, 255, 128]) / 256).all() and (out < np.array([1, 256, 129]) / 256).all()


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_torch_params_are_named_by_the_outputs(name):
    likelihood = LIKELIHOODS[name]
    out = torch.randn(2, 1, 3, 3)
    params = likelihood.torch_params(out, torch.full((1, 1, 1, 1), -1.0) if likelihood.learned_scale else None)
    assert len(params) == len(likelihood.outputs) and all(p.shape == out.shape for p in params)


def test_the_draw_description_names_the_seed_and_the_rule():
    for likelihood in LIKELIHOODS.values():
        assert "seed 3 and its own content" in likelihood.describe_draw(3)


def test_an_unknown_likelihood_names_the_known_ones():
    with pytest.raises(ValueError, match="known: bernoulli, gaussian"):
        likelihoods.get("poisson")


def test_importing_the_likelihoods_does_not_import_torch():
    code = "import sys, model.core.likelihoods; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gaussian_scale_is_floored_softly_at_the_quantisation_limit():
    from model.core.likelihoods import LOG_SCALE_FLOOR

    assert pytest.approx(-6.787, abs=1e-3) == LOG_SCALE_FLOOR  # ln((1/256) / sqrt(12))
    raw = torch.tensor([-100.0, -10.0, -6.79, -2.0, 3.0]).reshape(1, 1, 1, 5).requires_grad_()
    _, log_scale = LIKELIHOODS["gaussian"].torch_params(torch.zeros(1, 1, 1, 5), raw)
    assert (log_scale >= torch.tensor(LOG_SCALE_FLOOR, dtype=torch.float32)).all()
    assert log_scale[0, 0, 0, 0].item() == pytest.approx(LOG_SCALE_FLOOR, abs=1e-6)
    assert log_scale[0, 0, 0, 3:].tolist() == pytest.approx([-2.0, 3.0], abs=0.01)  # far above: unchanged
    log_scale.sum().backward()
    assert (raw.grad[0, 0, 0, 1:] > 0).all()  # a scale below the floor can still climb back
