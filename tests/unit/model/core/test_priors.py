"""The numpy priors: the mixture's density against torch's, its samples against its density, and N(0, I)
drawing exactly the stream the service always drew."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as td

from model.core import distributions as dist
from model.core.priors import Mixture, StandardNormal

LOGITS = np.array([2.0, 0.0, -1.0, -2.5])


def uneven_mixture() -> Mixture:
    """Four components over three dimensions, of very different widths and weights, so a sampler that got
    the weights or the widths wrong would draw from a visibly different density."""
    rng = np.random.default_rng(7)
    means = rng.normal(0.0, 2.0, (4, 3)).astype(np.float32)
    logvars = (np.array([[-2.0], [0.0], [1.0], [-1.0]]) + rng.uniform(-0.3, 0.3, (4, 3))).astype(np.float32)
    return Mixture(means, logvars, LOGITS - np.logaddexp.reduce(LOGITS), name="mog")


def torch_mixture(prior: Mixture) -> td.MixtureSameFamily:
    means, logvars = (torch.from_numpy(a.astype(np.float64)) for a in (prior.means, prior.logvars))
    components = td.Independent(td.Normal(means, torch.exp(0.5 * logvars)), 1)
    return td.MixtureSameFamily(td.Categorical(logits=torch.from_numpy(prior.log_weights)), components)


def test_the_mixture_log_density_is_torchs():
    prior = uneven_mixture()
    z = np.concatenate(
        [
            np.random.default_rng(1).normal(0.0, 3.0, (200, 3)),  # around and far from the mass
            prior.means.astype(np.float64),
            [[40.0, -40.0, 40.0]],
        ]
    )
    expected = torch_mixture(prior).log_prob(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(prior.log_prob(z), expected, rtol=0, atol=1e-5)
    assert prior.log_prob(z).dtype == np.float64


def test_a_one_component_standard_mixture_is_the_standard_normal():
    z = np.random.default_rng(2).normal(size=(50, 5))
    single = Mixture(np.zeros((1, 5)), np.zeros((1, 5)), np.zeros(1))
    np.testing.assert_allclose(single.log_prob(z), dist.log_standard_normal(z), rtol=1e-12)


def mean_log_density(log_densities: np.ndarray) -> tuple[float, float]:
    """The mean of log p over samples and its standard error."""
    return float(np.mean(log_densities)), float(np.std(log_densities, ddof=1) / math.sqrt(len(log_densities)))


def torch_entropy(prior: Mixture) -> tuple[float, float]:
    """-H(p) estimated independently: torch's own sampler and log_prob, on many draws."""
    reference = torch_mixture(prior)
    torch.manual_seed(0)
    return mean_log_density(reference.log_prob(reference.sample((400_000,))).numpy())


def test_the_samples_follow_the_density():
    """E_p[log p(z)] = -H(p): the core sampler's draws, scored by the core's density, against torch's."""
    prior = uneven_mixture()
    ours, our_error = mean_log_density(prior.log_prob(prior.sample(20_000, np.random.default_rng(3))))
    reference, reference_error = torch_entropy(prior)
    assert abs(ours - reference) < 4 * math.hypot(our_error, reference_error)


def test_the_density_check_catches_a_sampler_with_the_wrong_weights():
    """The check above has power: the same components drawn equally often miss -H(p) by many errors."""
    prior = uneven_mixture()
    equal = Mixture(prior.means, prior.logvars, np.full(4, -math.log(4)))
    ours, our_error = mean_log_density(prior.log_prob(equal.sample(20_000, np.random.default_rng(3))))
    reference, reference_error = torch_entropy(prior)
    assert abs(ours - reference) > 10 * math.hypot(our_error, reference_error)


def test_components_are_drawn_with_their_weights():
    prior, n = uneven_mixture(), 40_000
    counts = np.bincount(prior.choose(n, np.random.default_rng(4)), minlength=4)
    weights = np.exp(prior.log_weights)
    np.testing.assert_allclose(counts / n, weights, atol=4 * np.sqrt(weights * (1 - weights) / n).max())


def test_the_stream_order_and_the_temperature():
    """eps first, then one uniform per row for the components; t scales each component's deviation only."""
    prior, n = uneven_mixture(), 50
    rng = np.random.default_rng(5)
    eps = rng.standard_normal((n, 3), dtype=np.float32)
    chosen = prior.choose(n, rng)
    for t in (1.0, 0.3):
        expected = prior.means[chosen] + t * np.exp(0.5 * prior.logvars[chosen].astype(np.float64)) * eps
        np.testing.assert_allclose(prior.sample(n, np.random.default_rng(5), t), expected, rtol=1e-6, atol=1e-6)


def test_the_same_seed_draws_the_same_bytes():
    prior = uneven_mixture()
    a, b = (prior.sample(64, np.random.default_rng(11), 0.8) for _ in range(2))
    assert a.dtype == np.float32 and a.shape == (64, 3)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != prior.sample(64, np.random.default_rng(12), 0.8).tobytes()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 3.0])
def test_the_standard_normal_draws_what_the_service_always_drew(temperature):
    """/sample's latents before priors existed: t * default_rng(seed).standard_normal((n, D), float32)."""
    before = (temperature * np.random.default_rng(9).standard_normal((16, 32), dtype=np.float32)).astype(np.float32)
    assert StandardNormal(32).sample(16, np.random.default_rng(9), temperature).tobytes() == before.tobytes()


def test_the_standard_normal_kl_is_the_analytic_one_and_draws_nothing():
    rng = np.random.default_rng(6)
    mean, logvar = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(-1, 0.3, (8, 4)).astype(np.float32)
    z = dist.reparameterize(mean, logvar, rng.standard_normal((8, 4), dtype=np.float32))
    prior = StandardNormal(4)
    np.testing.assert_array_equal(prior.kl(z, mean, logvar), dist.kl_standard_normal(mean, logvar))
    np.testing.assert_array_equal(prior.log_prob(z), dist.log_standard_normal(z))
    assert prior.component_stream(rng) is None and prior.from_noise(z, None) is z


def test_the_mixture_kl_is_an_unbiased_one_sample_estimate():
    """Against a one-component N(0, I) mixture, the mean of log q(z) - log p(z) over z ~ q is the analytic KL."""
    mean, logvar = np.array([[0.8, -0.5]], dtype=np.float32), np.array([[-1.0, 0.4]], dtype=np.float32)
    eps = np.random.default_rng(8).standard_normal((200_000, 2), dtype=np.float32)
    z = dist.reparameterize(mean, logvar, eps)
    estimates = Mixture(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros(1)).kl(z, mean, logvar)
    analytic = dist.kl_standard_normal(mean, logvar)[0]
    assert abs(estimates.mean() - analytic) < 4 * estimates.std() / math.sqrt(len(estimates))


def test_a_given_log_prob_function_is_what_log_prob_runs():
    prior = uneven_mixture()
    graph_like = Mixture(prior.means, prior.logvars, prior.log_weights, log_prob_fn=lambda z: np.full(len(z), -7.0))
    z = np.zeros((3, 3), dtype=np.float32)
    np.testing.assert_array_equal(graph_like.log_prob(z), [-7.0, -7.0, -7.0])
    np.testing.assert_allclose(graph_like.numpy_log_prob(z), prior.log_prob(z), rtol=1e-12)


@pytest.mark.parametrize(
    "means, logvars, log_weights, message",
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2), "weights must sum to 1"),
        (np.zeros((2, 3)), np.zeros((2, 4)), np.log([0.5, 0.5]), r"\(K, D\)"),
        (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), "K > 0"),
        (np.full((1, 3), np.nan), np.zeros((1, 3)), np.zeros(1), "finite"),
    ],
)
def test_what_is_not_a_mixture_is_refused(means, logvars, log_weights, message):
    with pytest.raises(ValueError, match=message):
        Mixture(means, logvars, log_weights)


# ---- prior kinds: what each kind of prior is, asked instead of comparing names ----


def test_each_kind_says_its_components_kl_and_graph():
    from model.core.priors import MOG, PRIOR_KINDS, STANDARD_NORMAL, VAMP

    assert list(PRIOR_KINDS) == ["standard_normal", "mog", "vamp"]  # the names configs and manifests store
    assert STANDARD_NORMAL.closed_form_kl and not STANDARD_NORMAL.learned and STANDARD_NORMAL.graph is None
    assert STANDARD_NORMAL.default_components == 0
    for kind in (MOG, VAMP):
        assert not kind.closed_form_kl and kind.learned and kind.graph == "prior.onnx"
        assert kind.default_components == 500


def test_a_kind_refuses_components_it_cannot_have():
    from model.core.priors import MOG, STANDARD_NORMAL, prior_kind

    with pytest.raises(ValueError, match="must be positive for the mog prior"):
        MOG.check_components(0)
    with pytest.raises(ValueError, match="must be 0 for standard_normal"):
        STANDARD_NORMAL.check_components(3)
    with pytest.raises(ValueError, match="prior must be one of standard_normal, mog, vamp, not 'flow'"):
        prior_kind("flow")


def test_a_mixture_needs_a_stream_to_draw_its_components_from():
    eps = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="component_stream"):
        uneven_mixture().from_noise(eps, None)
