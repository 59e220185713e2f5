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
    assert dist.log_bernoulli(np.array([1.0, 1.0]), logits)[0] == pytest.approx(
        math.log(0.5) + math.log(0.75), abs=1e-6
    )
    assert dist.log_bernoulli(np.array([0.0, 0.0]), logits)[0] == pytest.approx(
        math.log(0.5) + math.log(0.25), abs=1e-6
    )


def test_log_bernoulli_is_stable_for_extreme_logits():
    logits = np.array([[-200.0, 200.0]], dtype=np.float32)
    assert dist.log_bernoulli(np.array([0.0, 1.0]), logits)[0] == pytest.approx(0.0, abs=1e-6)
    assert dist.log_bernoulli(np.array([1.0, 0.0]), logits)[0] == pytest.approx(-400.0)


def test_log_gaussian_hand_value():
    # N(1 | 0, 2^2) = -1/2 (1/2)^2 - log 2 - 1/2 log 2 pi
    expected = -0.125 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    assert dist.log_gaussian(np.array([1.0]), np.array([[0.0]]), np.array([[math.log(2.0)]]))[0] == pytest.approx(
        expected
    )


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
    np.testing.assert_allclose(
        losses.kl_standard_normal(t(mu), t(logvar)).numpy(), dist.kl_standard_normal(mu, logvar), rtol=1e-5
    )


def test_elbo_terms_weight_only_the_kl():
    terms = losses.elbo_terms(torch.tensor([-10.0]), torch.tensor([4.0]), beta=0.5)
    assert float(terms["elbo"]) == -14.0
    assert float(terms["objective"]) == -12.0


def _direct_standard_error_and_ess(w):
    """The two statistics from the weights themselves, for weights small enough to exponentiate."""
    return np.std(w, ddof=1) / (math.sqrt(len(w)) * np.mean(w)), w.sum() ** 2 / (w**2).sum()


def _log_sums(log_w):
    return np.logaddexp.reduce(log_w), np.logaddexp.reduce(2 * log_w)


def test_standard_error_and_ess_match_the_weights_computed_directly():
    log_w = np.random.default_rng(0).normal(-2.0, 1.5, 300)
    se, ess = _direct_standard_error_and_ess(np.exp(log_w))
    assert dist.log_mean_exp_standard_error(*_log_sums(log_w), 300) == pytest.approx(se, rel=1e-9)
    assert dist.effective_sample_size(*_log_sums(log_w)) == pytest.approx(ess, rel=1e-9)


def test_weights_far_beyond_floating_point_range_give_the_same_statistics():
    """log p(x|z) of an image is hundreds of nats: exp() of it is 0 or inf, the logs are not."""
    log_w = np.random.default_rng(1).normal(0.0, 2.0, 50)
    for shift in (-5000.0, 3000.0):
        assert dist.log_mean_exp_standard_error(*_log_sums(log_w + shift), 50) == pytest.approx(
            dist.log_mean_exp_standard_error(*_log_sums(log_w), 50), rel=1e-9
        )
        assert dist.effective_sample_size(*_log_sums(log_w + shift)) == pytest.approx(
            dist.effective_sample_size(*_log_sums(log_w)), rel=1e-9
        )


def test_equal_weights_have_full_ess_and_no_error():
    log_w = np.full(40, -731.25)
    assert dist.effective_sample_size(*_log_sums(log_w)) == pytest.approx(40.0)
    assert dist.log_mean_exp_standard_error(*_log_sums(log_w), 40) == pytest.approx(0.0, abs=1e-6)


def test_one_dominant_weight_has_ess_one_and_error_one():
    """se = sqrt((k / ESS - 1) / (k - 1)) = 1 when ESS = 1: the estimate is no better than one sample."""
    log_w = np.array([0.0, -900.0, -900.0, -900.0])
    assert dist.effective_sample_size(*_log_sums(log_w)) == pytest.approx(1.0)
    assert dist.log_mean_exp_standard_error(*_log_sums(log_w), 4) == pytest.approx(1.0)


def test_standard_error_is_undefined_for_one_weight_and_works_on_arrays():
    assert math.isnan(dist.log_mean_exp_standard_error(-3.0, -6.0, 1))
    log_w = np.random.default_rng(2).normal(size=(3, 20))
    sums = np.logaddexp.reduce(log_w, axis=1), np.logaddexp.reduce(2 * log_w, axis=1)
    rows = [dist.log_mean_exp_standard_error(*_log_sums(row), 20) for row in log_w]
    np.testing.assert_allclose(dist.log_mean_exp_standard_error(*sums, 20), rows, rtol=1e-12)
