"""The engine's randomness: an image's numbers follow its content and the seeds, never its position."""

import numpy as np
import pytest

from model.core.likelihoods import LIKELIHOODS
from model.core.preprocess import image_stream
from service.engine import Engine
from tests.unit.service.fakes import LATENT, SHAPE, FakeVAE

FIELDS = ("elbo", "reconstruction", "kl", "log_likelihood")


@pytest.fixture
def engine():
    return Engine.from_model(FakeVAE())


def grey_images(count: int, seed: int = 0) -> np.ndarray:
    """8-bit grey levels in [0, 1]: binarisation draws real noise for these, (N, C, H, W)."""
    return (np.random.default_rng(seed).integers(0, 256, (count, *SHAPE)) / 255.0).astype(np.float32)


def per_image(scores) -> np.ndarray:
    return np.stack([getattr(scores, name) for name in FIELDS], axis=1)  # (N, 4)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same noise, so the same numbers up to float32 rounding, which the matmul may vary with the
    batch's shape; noise drawn by position would move them by tenths of a nat or more."""
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_one_image_sent_three_times_scores_three_times_the_same(engine):
    """The reported bug: one shirt in one /elbo request scored -356.9, -364.6 and -356.0."""
    images = grey_images(1)
    scores = per_image(engine.score(np.repeat(images, 3, axis=0), k=10, seed=0, binarize_seed=0))
    assert_same(scores[1:], scores[[0, 0]])


def test_permuting_the_request_permutes_the_scores(engine):
    images, order = grey_images(5), np.array([3, 0, 4, 1, 2])
    scores = per_image(engine.score(images, k=10, seed=4, binarize_seed=9))
    assert_same(per_image(engine.score(images[order], k=10, seed=4, binarize_seed=9)), scores[order])


def test_an_image_alone_scores_as_in_a_request_of_many(engine):
    images = grey_images(4)
    together = per_image(engine.score(images, k=10, seed=2, binarize_seed=0))
    alone = np.concatenate(
        [per_image(engine.score(images[i : i + 1], k=10, seed=2, binarize_seed=0)) for i in range(4)]
    )
    assert_same(alone, together)


def test_the_binarisation_seed_changes_the_bits_of_grey_images_only(engine):
    grey, binary = grey_images(1), (grey_images(1, seed=1) > 0.5).astype(np.float32)
    bernoulli = LIKELIHOODS["bernoulli"]
    assert not np.array_equal(bernoulli.images_to_data_space(grey, 0), bernoulli.images_to_data_space(grey, 1))
    for seed in (0, 1):
        np.testing.assert_array_equal(bernoulli.images_to_data_space(binary, seed), binary)


def test_gaussian_dequantisation_is_per_image_and_stays_in_the_pixels_bin():
    images = grey_images(3)
    data = LIKELIHOODS["gaussian"].images_to_data_space(images[[0, 1, 0, 2]], 5)
    np.testing.assert_array_equal(data[2], data[0])
    np.testing.assert_array_equal(data[[0, 1, 3]], LIKELIHOODS["gaussian"].images_to_data_space(images, 5))
    levels = np.round(images[[0, 1, 0, 2]] * 255.0)
    assert np.all(data >= levels / 256.0) and np.all(data < (levels + 1) / 256.0)


def test_encode_sample_z_follows_the_image_not_its_position(engine):
    images = grey_images(3)
    mean, logvar, z, _ = engine.encode(images, sample=True, seed=8)
    _, _, z_moved, _ = engine.encode(images[[2, 0, 1]], sample=True, seed=8)
    np.testing.assert_allclose(z_moved, z[[2, 0, 1]], rtol=1e-6)
    eps = image_stream(8, images[1]).standard_normal(LATENT, dtype=np.float32)
    np.testing.assert_allclose(z[1], mean[1] + np.exp(0.5 * logvar[1]) * eps, rtol=1e-6)
    _, _, other_seed, _ = engine.encode(images, sample=True, seed=9)
    assert not np.allclose(other_seed, z)


def test_the_data_space_description_names_the_rule(engine):
    assert "its own content" in engine.data_space(3) and "seed 3" in engine.data_space(3)
