"""Anomaly statistics, the three scores and the calibration, checked against hand-computed values."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from model.core import anomaly, scoring
from model.core.anomaly import Calibration, ComplexityScore, LikelihoodScore, TypicalityScore
from tests.unit.service.fakes import FakeVAE, in_distribution


def stats_of(**columns):
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def test_compressed_bits_is_the_length_of_the_8_bit_png():
    image = in_distribution(1, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(image[0, 0] * 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=9)
    assert anomaly.compressed_bits(image)[0] == 8 * len(buffer.getvalue())


def test_a_constant_image_compresses_smaller_than_noise():
    flat = np.full((1, 1, 28, 28), 0.5, dtype=np.float32)
    noise = np.random.default_rng(0).random((1, 1, 28, 28)).astype(np.float32)
    assert anomaly.compressed_bits(flat)[0] * 4 < anomaly.compressed_bits(noise)[0]


def test_statistics_hold_the_elbo_of_the_same_draws_as_scoring():
    fake = FakeVAE()
    pixels = in_distribution(5, 0)
    stats = anomaly.statistics(fake, fake.likelihood, pixels, seed=3, binarize_seed=4)
    scores = scoring.score(fake, fake.likelihood, fake.likelihood.images_to_data_space(pixels, 4), 3, k=1)
    np.testing.assert_allclose(stats["elbo"], scores.elbo, rtol=1e-6)
    np.testing.assert_allclose(stats["kl"], scores.kl, rtol=1e-6)
    mean, logvar = fake.encode(fake.likelihood.images_to_data_space(pixels, 4))
    np.testing.assert_allclose(stats["latent_norm"], np.linalg.norm(mean, axis=1), rtol=1e-5)
    np.testing.assert_allclose(stats["posterior_logvar"], logvar.mean(axis=1), rtol=1e-6)
    assert set(stats) == set(anomaly.STATISTICS)


def test_an_images_statistics_do_not_depend_on_its_batch():
    fake = FakeVAE()
    pixels = in_distribution(4, 0)
    together = anomaly.statistics(fake, fake.likelihood, pixels, 0, 0)
    alone = anomaly.statistics(fake, fake.likelihood, pixels[2:3], 0, 0)
    for name in anomaly.STATISTICS:
        assert alone[name][0] == pytest.approx(together[name][2], rel=1e-6)


def test_likelihood_and_complexity_scores_by_hand():
    stats = stats_of(elbo=[-100.0, -20.0], complexity_bits=[800.0, 100.0])
    np.testing.assert_allclose(LikelihoodScore()(stats), [100.0, 20.0])
    np.testing.assert_allclose(ComplexityScore()(stats), [100.0 - 800 * math.log(2), 20.0 - 100 * math.log(2)])


def test_typicality_kde_is_minus_the_log_density_of_the_standardised_statistic():
    fit = stats_of(kl=[1.0, 2.0, 3.0, 4.0, 5.0])
    score = TypicalityScore.fit(fit, ("kl",), "kde", points=5)
    centre, scale = 3.0, (4.0 - 2.0) / 1.349
    points = (np.array([1.0, 2.0, 3.0, 4.0, 5.0]) - centre) / scale
    h = 1.06 * points.std() * 5**-0.2
    u = (10.0 - centre) / scale
    density = np.mean(np.exp(-0.5 * ((u - points) / h) ** 2)) / (h * math.sqrt(2 * math.pi))
    assert score(stats_of(kl=[10.0]))[0] == pytest.approx(-math.log(density), rel=1e-5)


def test_typicality_gaussian_is_half_the_squared_mahalanobis_distance():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4000, 2)) @ np.array([[1.0, 0.5], [0.0, 1.0]]) + [10.0, -3.0]
    score = TypicalityScore.fit(stats_of(a=values[:, 0], b=values[:, 1]), ("a", "b"), "gaussian")
    point = np.array([12.0, -1.0])
    standard = (values - score.center) / score.scale
    d = (point - score.center) / score.scale - standard.mean(axis=0)
    expected = 0.5 * d @ np.linalg.solve(np.cov(standard, rowvar=False), d)
    assert score(stats_of(a=[point[0]], b=[point[1]]))[0] == pytest.approx(expected, rel=1e-4)


def test_atypical_statistics_score_higher_in_either_direction():
    rng = np.random.default_rng(1)
    fit = stats_of(elbo=rng.normal(-200, 10, 3000), kl=rng.normal(20, 2, 3000))
    for estimator in ("kde", "gaussian"):
        score = TypicalityScore.fit(fit, ("elbo", "kl"), estimator)
        typical, high, low = score(stats_of(elbo=[-200.0, -20.0, -400.0], kl=[20.0, 20.0, 20.0]))
        assert high > typical and low > typical, estimator


def test_percentile_and_threshold_agree_with_the_reference():
    calibration = Calibration(LikelihoodScore(), np.arange(1, 101, dtype=np.float64))  # scores 1..100
    assert calibration.percentile(np.array([0.5, 1.0, 50.5, 101.0])).tolist() == [0.0, 0.0, 0.5, 1.0]
    assert calibration.threshold(0.01) == 99.0  # one reference score (100) lies above it
    assert calibration.threshold(0.05) == 95.0
    assert np.mean(calibration.reference > calibration.threshold(0.05)) == 0.05
    with pytest.raises(ValueError):
        calibration.threshold(0.0)


@pytest.mark.parametrize("estimator", ["kde", "gaussian"])
def test_a_calibration_read_back_from_json_scores_alike(estimator):
    fake = FakeVAE()
    stats = anomaly.statistics(fake, fake.likelihood, in_distribution(200, 0), 0, 0)
    score = TypicalityScore.fit(stats, ("elbo", "kl", "complexity_bits"), estimator, points=100)
    calibration = Calibration.build(score, stats, 0, 5, {"split": "test"})
    again = Calibration.from_json(calibration.to_json())
    np.testing.assert_allclose(again.score(stats), score(stats), rtol=1e-9)
    np.testing.assert_allclose(again.reference, calibration.reference, rtol=1e-5)
    assert (again.binarize_seed, again.data, again.score.statistics) == (5, {"split": "test"}, score.statistics)


@pytest.mark.parametrize("estimator, missing", [("kde", "points"), ("gaussian", "precision")])
def test_a_typicality_score_without_what_its_estimator_fits_says_which_part_is_missing(estimator, missing):
    score = TypicalityScore.fit(stats_of(kl=[1.0, 2.0, 3.0, 4.0, 5.0]), ("kl",), estimator, points=5)
    data = {key: value for key, value in score.to_dict().items() if key != missing}
    broken = TypicalityScore.from_dict(data)
    with pytest.raises(TypeError, match=f"no {missing}"):
        broken(stats_of(kl=[3.0]))
    with pytest.raises(TypeError, match=f"no {missing}"):
        broken.to_dict()


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": 99}', "format"),
        ('{"format": 1, "score": {"name": "likelihood"}, "seed": 0, "binarize_seed": 0, "reference": []}', "reference"),
        ('{"format": 1, "score": {"name": "magic"}, "seed": 0, "binarize_seed": 0, "reference": [1.0]}', "magic"),
    ],
)
def test_a_malformed_calibration_is_refused_with_its_reason(text, message):
    with pytest.raises(ValueError, match=message):
        Calibration.from_json(text)
