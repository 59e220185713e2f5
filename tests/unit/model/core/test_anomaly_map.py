"""model/core/anomaly_map.py and the likelihoods' per-pixel deviance: what the anomaly maps are made of."""

import io

import numpy as np
import pytest
from PIL import Image

from model.core import anomaly_map
from model.core.anomaly import Calibration, LikelihoodScore
from model.core.anomaly_map import MapCalibration, heatmap_png, pixel_terms, smooth, squared_error
from model.core.likelihoods import LIKELIHOODS, BernoulliProbs, Deterministic, NoLikelihood

RNG = np.random.default_rng(0)


def test_the_bernoulli_deviance_is_the_kl_from_the_grey_value_and_zero_where_the_decoder_predicts_it():
    values = RNG.uniform(0.0, 1.0, (4, 1, 3, 3))
    probs = RNG.uniform(0.01, 0.99, values.shape)
    logits = np.log(probs / (1.0 - probs))
    kl = values * np.log(values / probs) + (1.0 - values) * np.log((1.0 - values) / (1.0 - probs))
    bernoulli = LIKELIHOODS["bernoulli"]
    np.testing.assert_allclose(bernoulli.pixel_deviance(values, (logits,)), kl, atol=1e-10)
    np.testing.assert_allclose(BernoulliProbs().pixel_deviance(values, (probs,)), kl, atol=1e-10)
    exact = np.log(values / (1.0 - values))
    assert np.abs(bernoulli.pixel_deviance(values, (exact,))).max() < 1e-9
    binary = np.array([0.0, 1.0])  # black and white pixels: no entropy, the deviance is the whole NLL
    np.testing.assert_allclose(bernoulli.pixel_deviance(binary, (np.array([0.0, 0.0]),)), [np.log(2)] * 2)


def test_the_gaussian_deviance_is_half_the_squared_z_score_of_the_bins_centre():
    gaussian = LIKELIHOODS["gaussian"]
    pixels = np.array([0.0, 0.5, 1.0])
    centre = (np.round(pixels * 255) + 0.5) / 256
    mean, log_scale = np.array([0.1, 0.5, 0.7]), np.log(np.array([0.1, 0.2, 0.05]))
    expected = 0.5 * ((centre - mean) / np.exp(log_scale)) ** 2
    np.testing.assert_allclose(gaussian.pixel_deviance(pixels, (mean, log_scale)), expected)
    assert gaussian.pixel_deviance(pixels, (centre, log_scale)).max() == 0.0


def test_a_deterministic_decoder_has_no_per_pixel_terms():
    with pytest.raises(NoLikelihood):
        Deterministic().pixel_deviance(np.zeros(3), (np.zeros(3),))


class Linear:
    """mean = W x, logvar = -2; logits = V z: enough to check the plumbing, not the quality."""

    def __init__(self, shape=(1, 6, 5), latent=3):
        rng = np.random.default_rng(1)
        self.shape, size = shape, int(np.prod(shape))
        self.W = rng.normal(size=(latent, size)).astype(np.float32) * 0.2
        self.V = rng.normal(size=(size, latent)).astype(np.float32)
        self.likelihood = LIKELIHOODS["bernoulli"]

    def encode(self, x):
        mean = x.reshape(len(x), -1) @ self.W.T
        return mean, np.full_like(mean, -2.0)

    def decode(self, z):
        return ((z @ self.V.T).reshape(len(z), *self.shape).astype(np.float32),)


def test_pixel_terms_average_the_deviance_over_draws_keyed_by_content_not_by_batch():
    model, images = Linear(), RNG.uniform(0, 1, (5, 1, 6, 5)).astype(np.float32)
    terms = pixel_terms(model, model.likelihood, images, seed=3, samples=4)
    assert terms.shape == (5, 6, 5) and (terms >= 0).all()
    np.testing.assert_allclose(pixel_terms(model, model.likelihood, images[2:3], 3, 4)[0], terms[2], atol=1e-6)
    assert not np.allclose(pixel_terms(model, model.likelihood, images, 4, 4), terms)  # the seed matters
    # more images than one decoder call takes: chunked, the same terms
    many = np.repeat(images, 30, axis=0)  # 150 images of 4 draws: 3 calls of at most 256 rows
    np.testing.assert_allclose(pixel_terms(model, model.likelihood, many, 3, 4)[::30], terms, atol=1e-6)
    # the baseline: squared error of the deterministic reconstruction
    mean, _ = model.encode(images)
    reconstruction = 1 / (1 + np.exp(-model.decode(mean)[0].astype(np.float64)))
    expected = ((images - reconstruction) ** 2)[:, 0]
    np.testing.assert_allclose(squared_error(model, model.likelihood, images), expected, atol=1e-6)


def test_smoothing_keeps_mass_and_constants_and_zero_sigma_is_the_identity():
    maps = RNG.uniform(0, 1, (2, 7, 9))
    assert smooth(maps, 0) is not None and np.array_equal(smooth(maps, 0), maps)
    spike = np.zeros((1, 9, 9))
    spike[0, 4, 4] = 1.0
    blurred = smooth(spike, 1.0)
    assert blurred.sum() == pytest.approx(1.0) and blurred[0, 4, 4] < 0.2 and blurred[0, 4, 5] > 0.05
    np.testing.assert_allclose(smooth(np.full((1, 3, 3), 2.5), 4.0), 2.5)  # a kernel wider than the image


def test_the_calibrated_map_reads_as_the_share_of_reference_pixels_below():
    fit, reference = RNG.gamma(2.0, size=(40, 8, 8)), RNG.gamma(2.0, size=(60, 8, 8))
    calibration = MapCalibration.fit(fit, reference, samples=4, smoothing=0.0)
    percentiles = calibration(reference)
    assert percentiles.min() >= 0 and percentiles.max() <= 1
    assert np.mean(percentiles) == pytest.approx(0.5, abs=0.01)  # uniform over the reference itself
    assert np.mean(calibration(reference) < 0.9) == pytest.approx(0.9, abs=0.01)
    assert calibration(reference * 0 + 1e6).min() == 1.0 and calibration(reference * 0 - 1.0).max() == 0.0
    positional = MapCalibration.fit(fit, reference, smoothing=1.0, positional=True)
    assert positional.positional and positional.scale.shape == (8, 8) and (positional.scale > 0).all()


def test_the_map_calibration_survives_the_calibration_file_and_an_old_file_has_none():
    calibration = MapCalibration.fit(RNG.gamma(2.0, size=(20, 4, 6)), RNG.gamma(2.0, size=(30, 4, 6)))
    whole = Calibration(LikelihoodScore(), np.sort(RNG.normal(size=50)), 1, 2, {"split": "x"}, calibration)
    back = Calibration.from_json(whole.to_json())
    assert back.map is not None and back.map.shape == (4, 6) and back.map.samples == anomaly_map.MAP_SAMPLES
    terms = RNG.gamma(2.0, size=(3, 4, 6))
    np.testing.assert_allclose(back.map(terms), calibration(terms), atol=1e-5)  # stored to 6 digits
    assert Calibration.from_json(Calibration(LikelihoodScore(), np.arange(5.0)).to_json()).map is None
    broken = calibration.to_dict() | {"scale": [[0.0] * 6] * 4}
    with pytest.raises(ValueError, match="scale > 0"):
        MapCalibration.from_dict(broken)
    with pytest.raises(ValueError, match="unknown anomaly map method"):
        MapCalibration.from_dict(calibration.to_dict() | {"method": "magic"})


def test_the_heatmap_is_an_rgb_png_of_the_image_size_tinting_only_the_anomalous_pixels():
    image = np.full((1, 4, 5), 0.5, np.float32)
    percentiles = np.zeros((4, 5))
    percentiles[1, 2], percentiles[3, 3], percentiles[2, 2] = 1.0, 0.85, 0.99
    picture = np.asarray(Image.open(io.BytesIO(heatmap_png(image, percentiles))))
    assert picture.shape == (4, 5, 3)
    assert (picture[0, 0] == 128).all() and (picture[3, 3] == 128).all()  # below the 90th: the image as it is
    assert 0 < np.abs(picture[2, 2].astype(int) - 128).max() < np.abs(picture[1, 2].astype(int) - 128).max()
    assert picture[1, 2, 0] > 200 and picture[1, 2, 2] < 200  # the anomalous pixel: a warm tint
