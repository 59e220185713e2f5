"""ELBO and the log p(x) estimators on a linear-Gaussian model, where log p(x) is known in closed form."""

import math

import numpy as np
import pytest

from model.core import distributions as dist
from model.core import scoring
from model.core.likelihoods import LIKELIHOODS
from model.core.preprocess import image_stream
from model.core.priors import Mixture, StandardNormal

W = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # orthogonal columns: the exact posterior is diagonal
B = np.array([0.1, -0.2, 0.3])
SIGMA = 0.5
GAUSSIAN = LIKELIHOODS["gaussian"]
OFFSET = -3 * math.log(256.0)  # scoring reports Gaussian densities as 8-bit probabilities


class LinearGaussian:
    """z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I). `shrink` < 1 makes the encoder suboptimal."""

    def __init__(self, shrink: float = 1.0, widen: float = 0.0) -> None:
        self.shrink, self.widen = shrink, widen
        self.post_var = 1.0 / (1.0 + (W**2).sum(axis=0) / SIGMA**2)  # (D,)

    def encode(self, x):
        flat = x.reshape(len(x), -1).astype(np.float64)
        mean = self.shrink * ((flat - B) @ W) * self.post_var / SIGMA**2
        logvar = np.log(self.post_var) + self.widen
        return mean.astype(np.float32), np.broadcast_to(logvar, mean.shape).astype(np.float32)

    def decode(self, z):
        mean = (z.astype(np.float64) @ W.T + B).reshape(len(z), 1, 1, 3)
        return mean.astype(np.float32), np.full(mean.shape, math.log(SIGMA), dtype=np.float32)


def exact_log_px(x):
    cov = W @ W.T + SIGMA**2 * np.eye(3)
    d = x.reshape(-1) - B
    return -0.5 * (d @ np.linalg.solve(cov, d) + np.linalg.slogdet(cov)[1] + 3 * math.log(2 * math.pi))


X = np.array([[[[0.4, 0.1, 0.6]]], [[[0.9, 0.5, 0.2]]]], dtype=np.float32)  # (2, 1, 1, 3)


def test_iwae_with_the_exact_posterior_is_the_exact_log_likelihood():
    scores = scoring.score(LinearGaussian(), GAUSSIAN, X, seed=0, k=10)
    expected = [exact_log_px(x) + OFFSET for x in X]
    np.testing.assert_allclose(scores.log_likelihood, expected, atol=1e-4)


def test_elbo_is_a_lower_bound_that_iwae_tightens():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    elbo = np.mean([scoring.score(model, GAUSSIAN, X[:1], seed=s).elbo[0] for s in range(400)])
    iwae_100 = scoring.score(model, GAUSSIAN, X[:1], seed=0, k=100).log_likelihood[0]
    iwae_5000 = scoring.score(model, GAUSSIAN, X[:1], seed=0, k=5000).log_likelihood[0]
    truth = exact_log_px(X[0]) + OFFSET
    assert elbo < iwae_100 < truth + 0.05
    assert iwae_5000 == pytest.approx(truth, abs=0.05)
    assert elbo < truth - 0.3  # the suboptimal encoder leaves a real gap (0.41 nats)


def test_iwae_with_one_sample_equals_the_elbo_in_expectation():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    seeds = range(3000)
    elbo = np.mean([scoring.score(model, GAUSSIAN, X[:1], seed=s).elbo[0] for s in seeds])
    iwae_1 = np.mean([_iwae_k1(model, s) for s in seeds])
    assert iwae_1 == pytest.approx(elbo, abs=0.15)


def _iwae_k1(model, seed):
    """IWAE with k=1 is log p(x,z) - log q(z|x) for one z ~ q: score() with k=1 reports no IWAE,
    so run its estimator directly."""
    return scoring.log_weights(model, GAUSSIAN, X[:1], seed, k=1)[0, 0]


def test_chunking_does_not_change_the_estimate():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    a = scoring.score(model, GAUSSIAN, X, seed=3, k=50, chunk=7).log_likelihood
    b = scoring.score(model, GAUSSIAN, X, seed=3, k=50, chunk=1000).log_likelihood
    np.testing.assert_allclose(a, b, rtol=1e-6)


FIELDS = ("elbo", "reconstruction", "kl", "log_likelihood", "standard_error", "effective_sample_size")
# Four distinct images: X and two more, so batches can hold an image among strangers.
MORE = np.concatenate([X, np.array([[[[0.3, 0.8, 0.5]]], [[[0.7, 0.2, 0.9]]]], dtype=np.float32)])


ALL = slice(None)


def _fields(scores, order=ALL):
    return {name: getattr(scores, name)[order] for name in FIELDS}


def _assert_same(a, b):
    """Same noise, so the same numbers up to float32 rounding, which a BLAS may vary with the batch's
    shape; noise drawn by position would move them by tenths of a nat."""
    for name in FIELDS:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("position", [0, 1, 2])
def test_an_image_scores_the_same_at_any_position_in_a_batch(position):
    model = LinearGaussian(shrink=0.6, widen=0.7)
    others = [MORE[1], MORE[2]]
    batch = np.stack(others[:position] + [MORE[0]] + others[position:])  # MORE[0] at `position`
    alone = scoring.score(model, GAUSSIAN, MORE[:1], seed=5, k=20)
    _assert_same(_fields(scoring.score(model, GAUSSIAN, batch, seed=5, k=20), [position]), _fields(alone))


def test_permuting_a_batch_permutes_the_scores():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    order = np.array([2, 0, 3, 1])
    scores = scoring.score(model, GAUSSIAN, MORE, seed=5, k=20)
    _assert_same(_fields(scoring.score(model, GAUSSIAN, MORE[order], seed=5, k=20)), _fields(scores, order))


def test_batches_of_one_give_the_numbers_of_one_batch():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    whole = scoring.score(model, GAUSSIAN, MORE, seed=5, k=20)
    ones = [scoring.score(model, GAUSSIAN, MORE[i : i + 1], seed=5, k=20) for i in range(len(MORE))]
    _assert_same(_fields(whole), {name: np.concatenate([getattr(o, name) for o in ones]) for name in FIELDS})


def test_duplicates_in_a_batch_score_identically():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    scores = _fields(scoring.score(model, GAUSSIAN, MORE[[1, 0, 1, 1]], seed=5, k=20))
    _assert_same(
        {name: values[[2, 3]] for name, values in scores.items()},
        {name: values[[0, 0]] for name, values in scores.items()},
    )


def test_the_noise_follows_the_content_of_the_image():
    """Equal content draws equal noise; other content, even one pixel's last bit, or another seed
    draws other noise."""
    nudged = X[:1].copy()
    nudged[0, 0, 0, 0] = np.nextafter(nudged[0, 0, 0, 0], np.float32(1))
    draws = [image_stream(5, image).standard_normal(4) for image in (X[0], X[1], nudged[0], X[0])]
    assert not np.allclose(draws[0], draws[1]) and not np.allclose(draws[0], draws[2])
    np.testing.assert_array_equal(draws[0], draws[3])
    assert not np.allclose(draws[0], image_stream(6, X[0]).standard_normal(4))  # and the seed does


def test_seed_changes_the_noise():
    model = LinearGaussian(shrink=0.6, widen=0.7)
    a = scoring.score(model, GAUSSIAN, X, seed=1, k=20)
    b = scoring.score(model, GAUSSIAN, X, seed=2, k=20)
    assert not np.allclose(a.log_likelihood, b.log_likelihood)
    np.testing.assert_array_equal(a.kl, b.kl)  # the KL is analytic


def test_summary_reports_nats_and_bits_per_dim():
    summary = scoring.summarize(scoring.score(LinearGaussian(), GAUSSIAN, X, seed=0, k=10))
    assert summary["images"] == 2 and summary["iwae_k"] == 10
    assert summary["nll_nats"] == pytest.approx(-summary["log_likelihood"])
    assert summary["bits_per_dim"] == pytest.approx(summary["nll_nats"] / (3 * math.log(2)))


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be"):
        scoring.score(LinearGaussian(), GAUSSIAN, X, seed=0, k=0)


def _truth(x):
    return exact_log_px(x) + OFFSET


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_both_estimators_converge_on_the_exact_log_likelihood(estimator):
    """With a slightly-off encoder; the closed form is log N(x | b, W W^T + sigma^2 I)."""
    model, truth = LinearGaussian(shrink=0.8, widen=0.3), [_truth(x) for x in X]
    coarse = scoring.score(model, GAUSSIAN, X, seed=0, k=50, estimator=estimator)
    fine = scoring.score(model, GAUSSIAN, X, seed=0, k=20_000, estimator=estimator)
    assert fine.estimator == estimator
    np.testing.assert_allclose(fine.log_likelihood, truth, atol=0.05)
    assert np.all(np.abs(fine.log_likelihood - truth) < 4 * fine.standard_error)
    assert np.all(fine.standard_error < coarse.standard_error / 10)  # 1/sqrt(k): 20 times smaller


def test_importance_sampling_from_the_exact_posterior_has_equal_weights():
    """w = p(x, z) / p(z|x) = p(x) for every z: ESS = k and no error."""
    scores = scoring.score(LinearGaussian(), GAUSSIAN, X, seed=0, k=64)
    np.testing.assert_allclose(scores.effective_sample_size, 64, rtol=1e-5)
    np.testing.assert_allclose(scores.standard_error, 0, atol=1e-4)


def test_the_prior_wastes_samples_the_encoder_does_not():
    model = LinearGaussian(shrink=0.8, widen=0.3)
    prior = scoring.score(model, GAUSSIAN, X, seed=0, k=1000, estimator="prior")
    importance = scoring.score(model, GAUSSIAN, X, seed=0, k=1000)
    assert np.all(prior.effective_sample_size < importance.effective_sample_size / 2)
    assert np.all(prior.standard_error > 2 * importance.standard_error)


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_the_standard_error_is_the_spread_of_the_estimate_over_seeds(estimator):
    model = LinearGaussian(shrink=0.6, widen=0.7)
    runs = [scoring.score(model, GAUSSIAN, X[:1], seed=s, k=100, estimator=estimator) for s in range(300)]
    spread = np.std([r.log_likelihood[0] for r in runs])
    assert np.mean([r.standard_error[0] for r in runs]) == pytest.approx(spread, rel=0.2)


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_the_first_j_log_weights_are_the_estimate_at_k_j(estimator):
    model = LinearGaussian(shrink=0.6, widen=0.7)
    log_w = scoring.log_weights(model, GAUSSIAN, X, seed=4, k=30, estimator=estimator, chunk=7)  # (2, 30)
    assert log_w.shape == (2, 30)
    for j in (2, 7, 8, 30):
        scores = scoring.score(model, GAUSSIAN, X, seed=4, k=j, estimator=estimator)
        np.testing.assert_allclose(
            np.logaddexp.reduce(log_w[:, :j], axis=1) - math.log(j), scores.log_likelihood, rtol=1e-12
        )


def test_prior_and_importance_share_the_noise_but_not_the_latents():
    """The prior's z is the eps from which importance sampling builds z = mean + sigma * eps."""
    model = LinearGaussian(shrink=0.6, widen=0.7)
    stream = image_stream(2, X[0])
    stream.standard_normal(2, dtype=np.float32)  # the ELBO's
    eps = stream.standard_normal((5, 2), dtype=np.float32)
    expected = GAUSSIAN.log_prob_8bit(X[0].reshape(-1), model.decode(eps))
    np.testing.assert_allclose(
        scoring.log_weights(model, GAUSSIAN, X[:1], 2, k=5, estimator="prior")[0], expected, rtol=1e-12
    )


@pytest.mark.parametrize("position", [0, 2])
def test_the_prior_estimate_of_an_image_does_not_depend_on_the_batch(position):
    model = LinearGaussian(shrink=0.6, widen=0.7)
    batch = np.stack([MORE[1], MORE[2]][:position] + [MORE[0]] + [MORE[1], MORE[2]][position:])
    alone = scoring.score(model, GAUSSIAN, MORE[:1], seed=5, k=20, estimator="prior")
    together = scoring.score(model, GAUSSIAN, batch, seed=5, k=20, estimator="prior")
    _assert_same(_fields(together, [position]), _fields(alone))


def test_k_1_reports_no_estimate_for_either_estimator():
    for estimator in scoring.ESTIMATORS:
        scores = scoring.score(LinearGaussian(), GAUSSIAN, X, seed=0, k=1, estimator=estimator)
        assert scores.log_likelihood is None and scores.standard_error is None and scores.effective_sample_size is None


def test_an_unknown_estimator_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown estimator 'uniform'; known: importance, prior"):
        scoring.score(LinearGaussian(), GAUSSIAN, X, seed=0, k=2, estimator="uniform")


# ---- the backend's prior: N(0, I) as before, bit for bit, or a mixture ----

TWO_COMPONENTS = Mixture(
    np.array([[1.0, 0.0], [-1.0, 0.5]]), np.array([[-0.5, -1.0], [0.0, -0.5]]), np.log([0.3, 0.7]), name="mog"
)


class WithPrior(LinearGaussian):
    """The linear-Gaussian model under another prior: p(x) = sum_k w_k N(x | W m_k + b, W S_k W^T + sigma^2 I)."""

    def __init__(self, prior, shrink: float = 0.8, widen: float = 0.3) -> None:
        super().__init__(shrink, widen)
        self.prior = prior


def exact_log_px_under(prior: Mixture, x) -> float:
    d = x.reshape(-1) - B
    terms = []
    for mean, logvar, log_weight in zip(prior.means.astype(np.float64), prior.logvars, prior.log_weights, strict=False):
        cov = W @ np.diag(np.exp(logvar.astype(np.float64))) @ W.T + SIGMA**2 * np.eye(3)
        r = d - W @ mean
        terms.append(
            log_weight - 0.5 * (r @ np.linalg.solve(cov, r) + np.linalg.slogdet(cov)[1] + 3 * math.log(2 * math.pi))
        )
    return float(np.logaddexp.reduce(terms)) + OFFSET


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_both_estimators_converge_on_the_exact_log_likelihood_under_a_mixture_prior(estimator):
    model, truth = WithPrior(TWO_COMPONENTS), [exact_log_px_under(TWO_COMPONENTS, x) for x in X]
    scores = scoring.score(model, GAUSSIAN, X, seed=0, k=20_000, estimator=estimator)
    np.testing.assert_allclose(scores.log_likelihood, truth, atol=0.05)
    assert np.all(np.abs(scores.log_likelihood - truth) < 4 * scores.standard_error)
    standard = [_truth(x) for x in X]
    assert np.all(np.abs(np.array(truth) - standard) > 0.2)  # the prior is what moved the answer


def test_the_mixture_kl_is_log_q_minus_log_p_at_the_elbos_z():
    model = WithPrior(TWO_COMPONENTS)
    mean, logvar = model.encode(X)
    eps = np.stack([image_stream(4, x).standard_normal(2, dtype=np.float32) for x in X])
    z = dist.reparameterize(mean, logvar, eps)
    scores = scoring.score(model, GAUSSIAN, X, seed=4)
    np.testing.assert_allclose(
        scores.kl, dist.log_normal_diag(z, mean, logvar) - TWO_COMPONENTS.log_prob(z), rtol=1e-12
    )
    np.testing.assert_allclose(
        scores.elbo, GAUSSIAN.log_prob_8bit(X.reshape(2, -1), model.decode(z)) - scores.kl, rtol=1e-12
    )


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_chunking_and_batching_do_not_move_a_mixture_priors_draws(estimator):
    """The mixture's components come from a child of the image's stream, so chunks cannot reorder them."""
    model = WithPrior(TWO_COMPONENTS)
    whole = scoring.score(model, GAUSSIAN, MORE, seed=3, k=50, estimator=estimator)
    chunked = scoring.score(model, GAUSSIAN, MORE, seed=3, k=50, chunk=7, estimator=estimator)
    alone = scoring.score(model, GAUSSIAN, MORE[2:3], seed=3, k=50, estimator=estimator)
    _assert_same(_fields(chunked), _fields(whole))
    _assert_same(_fields(alone), _fields(whole, [2]))
    log_w = scoring.log_weights(model, GAUSSIAN, MORE, seed=3, k=50, estimator=estimator, chunk=7)
    np.testing.assert_allclose(np.logaddexp.reduce(log_w, axis=1) - math.log(50), whole.log_likelihood, rtol=1e-12)


def test_the_prior_estimator_draws_its_latents_from_the_mixture():
    model = WithPrior(TWO_COMPONENTS)
    stream = image_stream(2, X[0])
    components = stream.spawn(1)[0]
    stream.standard_normal(2, dtype=np.float32)  # the ELBO's
    z = TWO_COMPONENTS.from_noise(stream.standard_normal((5, 2), dtype=np.float32), components)
    expected = GAUSSIAN.log_prob_8bit(X[0].reshape(-1), model.decode(z))
    np.testing.assert_allclose(
        scoring.log_weights(model, GAUSSIAN, X[:1], 2, k=5, estimator="prior")[0], expected, rtol=1e-12
    )


@pytest.mark.parametrize("estimator", ["prior", "importance"])
def test_the_standard_normal_prior_is_the_analytic_path_bit_for_bit(estimator):
    """A backend with StandardNormal, one without a prior, and the formulas of a VAE with p(z) = N(0, I)."""
    plain = LinearGaussian(shrink=0.6, widen=0.7)
    explicit = WithPrior(StandardNormal(2), shrink=0.6, widen=0.7)
    a = scoring.score(plain, GAUSSIAN, MORE, seed=5, k=30, chunk=7, estimator=estimator)
    b = scoring.score(explicit, GAUSSIAN, MORE, seed=5, k=30, chunk=7, estimator=estimator)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    mean, logvar = plain.encode(MORE)
    np.testing.assert_array_equal(a.kl, dist.kl_standard_normal(mean, logvar))
    stream = image_stream(5, MORE[0])
    eps0 = stream.standard_normal(2, dtype=np.float32)
    eps = stream.standard_normal((30, 2), dtype=np.float32)
    z = eps if estimator == "prior" else dist.reparameterize(mean[0], logvar[0], eps)
    log_px_z = GAUSSIAN.log_prob_8bit(MORE[0].reshape(-1), plain.decode(z))
    log_w = (
        log_px_z
        if estimator == "prior"
        else (log_px_z + dist.log_standard_normal(z) - dist.log_normal_diag(z, mean[0], logvar[0]))
    )
    np.testing.assert_array_equal(
        scoring.log_weights(plain, GAUSSIAN, MORE[:1], 5, k=30, estimator=estimator)[0], log_w
    )
    z0 = dist.reparameterize(mean[:1], logvar[:1], eps0[None])
    np.testing.assert_array_equal(
        a.elbo[:1],
        GAUSSIAN.log_prob_8bit(MORE[:1].reshape(1, -1), plain.decode(z0))
        - dist.kl_standard_normal(mean[:1], logvar[:1]),
    )
