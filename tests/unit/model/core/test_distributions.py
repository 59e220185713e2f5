import math

import numpy as np
import pytest
import torch

from model import losses
from model.core import distributions as dist


def test_kl_of_standard_normal_is_zero():
    assert dist.kl_standard_normal(np.zeros((3, 5)), np.zeros((3, 5))) == pytest.approx(np.zeros(3))


def test_kl_matches_hand_computed_value():
    # one dimension, mu = 1, sigma^2 = e: 1/2 (1 + e - 1 - 1) = (e - 1) / 2
    assert dist.kl_standard_normal(np.array([[1.0]]), np.array([[1.0]]))[0] == pytest.approx((math.e - 1) / 2)


def test_kl_matches_monte_carlo_estimate():
    rng = np.random.default_rng(0)
    mean, logvar = np.array([0.5, -1.0]), np.array([-0.5, 0.3])
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal((200_000, 2))
    mc = np.mean(dist.log_normal_diag(z, mean, logvar) - dist.log_standard_normal(z))
    assert dist.kl_standard_normal(mean[None], logvar[None])[0] == pytest.approx(mc, abs=0.01)


def test_log_bernoulli_hand_values():
    # logit 0 -> p = 1/2 for either outcome; logit log 3 -> p(1) = 3/4
    logits = np.array([[0.0, math.log(3.0)]], dtype=np.float32)
    assert dist.log_bernoulli(np.array([1.0, 1.0]), logits)[0] == pytest.approx(math.log(0.5) + math.log(0.75), abs=1e-6)
    assert dist.log_bernoulli(np.array([0.0, 0.0]), logits)[0] == pytest.approx(math.log(0.5) + math.log(0.25), abs=1e-6)


def test_log_bernoulli_is_stable_for_extreme_logits():
    logits = np.array([[-200.0, 200.0]], dtype=np.float32)
    assert dist.log_bernoulli(np.array([0.0, 1.0]), logits)[0] == pytest.approx(0.0, abs=1e-6)
    assert dist.log_bernoulli(np.array([1.0, 0.0]), logits)[0] == pytest.approx(-400.0)


def test_log_gaussian_hand_value():
    # N(1 | 0, 2^2) = -1/2 (1/2)^2 - log 2 - 1/2 log 2 pi
    expected = -0.125 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert dist.log_gaussian(np.array([1.0]), np.array([[0.0]]), np.array([[math.log(2.0)]]))[0] == pytest.approx(expected)


def test_log_normal_diag_at_prior_equals_standard_normal():
    z = np.random.default_rng(1).standard_normal((4, 3))
    assert dist.log_normal_diag(z, np.zeros(3), np.zeros(3)) == pytest.approx(dist.log_standard_normal(z))


def test_reparameterize_shifts_and_scales_the_noise():
    z = dist.reparameterize(np.array([1.0]), np.array([math.log(4.0)]), np.array([0.5]))
    assert z[0] == pytest.approx(1.0 + 2.0 * 0.5)


def test_bits_per_dim():
    assert dist.bits_per_dim(784 * math.log(2.0), 784) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_torch_kl_agrees_with_its_numpy_twin(seed):  # the likelihoods' twins: test_likelihoods.py
    rng = np.random.default_rng(seed)
    mu, logvar = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    t = torch.from_numpy
    np.testing.assert_allclose(losses.kl_standard_normal(t(mu), t(logvar)).numpy(),
                               dist.kl_standard_normal(mu, logvar), rtol=1e-5)


def test_elbo_terms_weight_only_the_kl():
    terms = losses.elbo_terms(torch.tensor([-10.0]), torch.tensor([4.0]), beta=0.5)
    assert float(terms["elbo"]) == -14.0
    assert float(terms["objective"]) == -12.0
