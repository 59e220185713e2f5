"""The likelihoods imported models declare and vae-train never trains: Bernoulli probabilities scored as torch's
binary_cross_entropy scores them (each log clamped at -100), a deterministic decoder that cannot score, and
`for_outputs` choosing between them from a manifest's name and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.core import likelihoods
from model.core.likelihoods import (
    LIKELIHOODS,
    LOG_PROB_CLAMP,
    BernoulliProbs,
    Deterministic,
    NoLikelihood,
    for_outputs,
)


def torch_bce_log_prob(x: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """-binary_cross_entropy summed per row, as pytorch/examples' VAE computes its reconstruction term."""
    x_t = torch.from_numpy(np.broadcast_to(x, probs.shape).copy()).double()
    loss = F.binary_cross_entropy(torch.from_numpy(probs).double(), x_t, reduction="none")
    return -loss.sum(dim=1).numpy()


def test_bernoulli_probs_equals_torchs_binary_cross_entropy_per_row():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.01, 0.99, (4, 50)).astype(np.float32)
    x = (rng.random((4, 50)) < 0.5).astype(np.float32)
    got = BernoulliProbs().log_prob(x, (probs,))
    assert got.shape == (4,)
    np.testing.assert_allclose(got, torch_bce_log_prob(x, probs), rtol=1e-6)


def test_bernoulli_probs_of_exactly_0_and_1_cost_100_nats_as_torch_clamps_them():
    probs = np.array([[0.0, 1.0, 0.0, 1.0, 0.5]], dtype=np.float32)
    x = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    got = BernoulliProbs().log_prob(x, (probs,))
    expected = torch_bce_log_prob(x, probs)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    np.testing.assert_allclose(got, [2 * LOG_PROB_CLAMP + np.log(0.5)], rtol=1e-7)  # two misses, two sure hits


@pytest.mark.parametrize("p", [0.0, 1.0])
@pytest.mark.parametrize("x", [0.0, 1.0])
def test_each_saturated_pixel_costs_what_torch_says(p, x):
    probs, data = np.array([[p]], np.float32), np.array([[x]], np.float32)
    got = BernoulliProbs().log_prob(data, (probs,))
    np.testing.assert_allclose(got, torch_bce_log_prob(data, probs), atol=0)
    assert got[0] == (0.0 if p == x else LOG_PROB_CLAMP)


def test_bernoulli_probs_scores_soft_targets_as_torch_does():
    rng = np.random.default_rng(1)
    probs = np.concatenate([rng.random((3, 20)), np.zeros((3, 2)), np.ones((3, 2))], axis=1).astype(np.float32)
    x = rng.random((3, 24)).astype(np.float32)
    np.testing.assert_allclose(BernoulliProbs().log_prob(x, (probs,)), torch_bce_log_prob(x, probs), rtol=1e-6)


def test_bernoulli_probs_broadcasts_one_image_against_k_parameter_sets():
    rng = np.random.default_rng(2)
    probs = rng.uniform(0.05, 0.95, (5, 30)).astype(np.float32)
    x = (rng.random(30) < 0.5).astype(np.float32)
    got = BernoulliProbs().log_prob(x, (probs,))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, torch_bce_log_prob(x, probs), rtol=1e-6)


def test_probabilities_that_are_sigmoids_of_logits_score_as_the_logits_do():
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 3.0, (4, 64))
    x = (rng.random(64) < 0.5).astype(np.float32)
    by_logits = LIKELIHOODS["bernoulli"].log_prob(x, (logits.astype(np.float32),))
    exact = BernoulliProbs().log_prob(x, (1.0 / (1.0 + np.exp(-logits)),))  # float64 probabilities
    np.testing.assert_allclose(exact, by_logits, rtol=1e-5)
    as_served = BernoulliProbs().log_prob(x, ((1.0 / (1.0 + np.exp(-logits))).astype(np.float32),))
    np.testing.assert_allclose(as_served, by_logits, rtol=1e-4)  # a graph's float32 probabilities


def test_bernoulli_probs_is_a_bernoulli_likelihood_read_from_probabilities():
    probs = BernoulliProbs()
    assert probs.name == "bernoulli" and probs.outputs == ("probs",)
    assert probs.data_space == LIKELIHOODS["bernoulli"].data_space and probs.discrete_offset(784) == 0.0
    mean = probs.pixel_mean((np.array([[-0.25, 0.3, 1.5]], np.float32),))
    assert mean.dtype == np.float32 and mean.tolist() == [[0.0, pytest.approx(0.3), 1.0]]


def test_a_deterministic_decoder_cannot_score_an_image():
    deterministic = Deterministic()
    x, params = np.zeros(4, np.float32), (np.zeros((2, 4), np.float32),)
    with pytest.raises(NoLikelihood) as info:
        deterministic.log_prob(x, params)
    assert str(info.value) == "the model's decoder is deterministic (likelihood none): it has no p(x|z)"
    assert isinstance(info.value, ValueError)
    with pytest.raises(NoLikelihood):
        deterministic.log_prob_8bit(x, params)


def test_a_deterministic_decoder_still_gives_its_mean_and_leaves_pixels_as_they_are():
    deterministic = Deterministic()
    assert deterministic.name == "none" and deterministic.outputs == ("mean",)
    mean = deterministic.pixel_mean((np.array([[-1.0, 0.25, 2.0]], np.float32),))
    assert mean.dtype == np.float32 and mean.tolist() == [[0.0, 0.25, 1.0]]
    pixels = np.array([[0.1, 0.9]], np.float32)
    np.testing.assert_array_equal(deterministic.to_data_space(pixels, np.random.default_rng(0)), pixels)
    assert "no likelihood" in deterministic.describe_draw(0)


@pytest.mark.parametrize("served", [BernoulliProbs(), Deterministic()], ids=["probs", "none"])
def test_the_serving_only_likelihoods_refuse_to_train(served):
    for call in (
        lambda: served.torch_log_prob(None, ()),
        lambda: served.torch_params(None, None),
        lambda: served.torch_to_data_space(None, None),
    ):
        with pytest.raises(NotImplementedError, match="is served, not trained"):
            call()


@pytest.mark.parametrize(
    "name, outputs, expected",
    [
        ("bernoulli", ["logits"], likelihoods.Bernoulli),
        ("bernoulli", ["probs"], BernoulliProbs),
        ("gaussian", ["mean", "log_scale"], likelihoods.Gaussian),
        ("gaussian", ["mean"], likelihoods.Gaussian),  # its constant scale is broadcast by the adapter first
        ("none", ["mean"], Deterministic),
    ],
)
def test_for_outputs_picks_the_likelihood_a_manifest_declares(name, outputs, expected):
    chosen = for_outputs(name, outputs)
    assert type(chosen) is expected
    assert chosen.name == name


def test_for_outputs_returns_the_registered_objects_for_vae_exports_forms():
    assert for_outputs("bernoulli", ("logits",)) is LIKELIHOODS["bernoulli"]
    assert for_outputs("gaussian", ["mean", "log_scale"]) is LIKELIHOODS["gaussian"]


def test_for_outputs_refuses_an_unknown_likelihood_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'; known: bernoulli, gaussian"):
        for_outputs("poisson", ["rate"])


def test_the_serving_only_likelihoods_are_not_trainable_choices():
    assert sorted(LIKELIHOODS) == ["bernoulli", "gaussian"]
