"""The two-level estimators (model/core/hierarchy.py) against a linear-Gaussian two-level model, whose
log p(x) and posteriors have closed forms:

    z2 ~ N(0, I),  z1 | z2 ~ N(A z2 + a, diag(s1)),  x | z1, z2 ~ N(B z1 + C z2 + b, diag(sx)),
    so x ~ N(B a + b, U U^T + B diag(s1) B^T + diag(sx)) with U = B A + C.

With one-dimensional latents the diagonal posteriors can be the exact ones, and then every importance
weight is p(x) itself; with more, diagonal posteriors are approximations, and the IWAE estimate must
still converge to the exact log p(x) while the ELBO stays below it."""

import math

import numpy as np
import pytest

from model.core import distributions as dist
from model.core.hierarchy import kl_normal_diag, log_weights_two_levels, score_two_levels
from model.core.likelihoods import get as likelihood
from model.core.priors import StandardNormal

GAUSSIAN = likelihood("gaussian")
SHAPE = (1, 2, 3)  # x: six dimensions


class LinearGaussian:
    """The model above, with q(z2|x) and q(z1|x,z2) the exact posteriors' means and their variances'
    diagonals times `inflate` (exact for one-dimensional latents and inflate 1)."""

    def __init__(self, upper: int, lower: int, seed: int = 0, inflate: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        n = math.prod(SHAPE)
        self.A, self.a = rng.normal(size=(lower, upper)), rng.normal(size=lower)
        self.B, self.C, self.b = rng.normal(size=(n, lower)), rng.normal(size=(n, upper)), rng.normal(size=n)
        self.s1, self.sx = rng.uniform(0.3, 1.0, size=lower), rng.uniform(0.2, 0.6, size=n)
        self.inflate, self.lower_latent_dim = inflate, lower
        self.prior = StandardNormal(upper)
        self.U = self.B @ self.A + self.C
        self.mean_x = self.B @ self.a + self.b
        noise = self.B @ np.diag(self.s1) @ self.B.T + np.diag(self.sx)  # x's covariance given z2
        self.noise_inv = np.linalg.inv(noise)
        self.cov_x = self.U @ self.U.T + noise
        self.cov2 = np.linalg.inv(np.eye(upper) + self.U.T @ self.noise_inv @ self.U)
        self.cov1 = np.linalg.inv(np.diag(1 / self.s1) + self.B.T @ np.diag(1 / self.sx) @ self.B)

    def log_px(self, x: np.ndarray) -> np.ndarray:
        """The exact log density of each flattened x (N, n), plus the 8-bit offset scores report."""
        centred = x.reshape(len(x), -1) - self.mean_x
        _, logdet = np.linalg.slogdet(self.cov_x)
        quad = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(self.cov_x), centred)
        exact = -0.5 * (quad + logdet + len(self.mean_x) * math.log(2 * math.pi))
        return exact + GAUSSIAN.discrete_offset(len(self.mean_x))

    def encode(self, x):
        flat = x.reshape(len(x), -1).astype(np.float64)
        mean = (self.cov2 @ self.U.T @ self.noise_inv @ (flat - self.mean_x).T).T
        logvar = np.broadcast_to(np.log(np.diag(self.cov2) * self.inflate), mean.shape)
        return mean.astype(np.float32), logvar.astype(np.float32), flat.astype(np.float32)

    def encode_lower(self, features, z2):
        h, z2 = features.astype(np.float64), z2.astype(np.float64)
        given = (self.A @ z2.T).T + self.a
        residual = h - (self.C @ z2.T).T - self.b
        mean = (self.cov1 @ (given / self.s1 + (self.B.T @ (residual / self.sx).T).T).T).T
        logvar = np.broadcast_to(np.log(np.diag(self.cov1) * self.inflate), mean.shape)
        return mean.astype(np.float32), logvar.astype(np.float32)

    def lower_prior(self, z2):
        mean = (self.A @ z2.astype(np.float64).T).T + self.a
        return mean.astype(np.float32), np.broadcast_to(np.log(self.s1), mean.shape).astype(np.float32)

    def decode(self, z1, z2):
        mean = (self.B @ z1.astype(np.float64).T + self.C @ z2.astype(np.float64).T).T + self.b
        log_scale = np.broadcast_to(0.5 * np.log(self.sx), mean.shape)
        return mean.reshape(len(z1), *SHAPE), log_scale.reshape(len(z1), *SHAPE)


def images(model: LinearGaussian, count: int, seed: int = 1) -> np.ndarray:
    """Draws of x from the model itself."""
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(model.mean_x, model.cov_x, size=count)
    return x.reshape(count, *SHAPE).astype(np.float32)


def test_with_the_exact_posteriors_every_weight_is_p_of_x():
    model = LinearGaussian(upper=1, lower=1)
    x = images(model, 4)
    log_w = log_weights_two_levels(model, GAUSSIAN, x, seed=3, k=50)
    # float32 latents: the weights agree with the exact log p(x) to float32's precision
    np.testing.assert_allclose(log_w, np.repeat(model.log_px(x)[:, None], 50, axis=1), atol=2e-4)
    scores = score_two_levels(model, GAUSSIAN, x, seed=3, k=50)
    np.testing.assert_allclose(scores.log_likelihood, model.log_px(x), atol=2e-4)
    np.testing.assert_allclose(scores.effective_sample_size, 50, rtol=1e-3)


@pytest.mark.parametrize("estimator", ["importance", "prior"])
def test_the_estimates_converge_to_the_exact_log_likelihood(estimator):
    model = LinearGaussian(upper=2, lower=3, inflate=1.5)  # diagonal posteriors: approximations
    x = images(model, 3)
    scores = score_two_levels(model, GAUSSIAN, x, seed=0, k=20_000, chunk=4096, estimator=estimator)
    exact = model.log_px(x)
    assert np.all(np.abs(scores.log_likelihood - exact) < 4 * scores.standard_error + 0.02)
    if estimator == "importance":  # close, and far more efficient than sampling the prior
        assert np.all(np.abs(scores.log_likelihood - exact) < 0.05)
        assert np.all(scores.effective_sample_size > 1000)


def test_the_elbo_is_below_log_p_x_on_average():
    model = LinearGaussian(upper=2, lower=3, inflate=3.0)  # posteriors three times too wide: a clear gap
    x = images(model, 2)
    elbos = np.stack([score_two_levels(model, GAUSSIAN, x, seed=s).elbo for s in range(400)])
    gap = model.log_px(x) - elbos.mean(axis=0)
    assert np.all(gap > 4 * elbos.std(axis=0) / math.sqrt(len(elbos)))


def test_an_image_scores_the_same_alone_in_a_batch_and_at_any_chunk():
    model = LinearGaussian(upper=2, lower=2, inflate=1.2)
    x = images(model, 5)
    batch = score_two_levels(model, GAUSSIAN, x, seed=7, k=300, chunk=64)
    alone = score_two_levels(model, GAUSSIAN, x[3:4], seed=7, k=300, chunk=1000)
    assert batch.elbo[3] == alone.elbo[0] and batch.log_likelihood[3] == alone.log_likelihood[0]
    weights = log_weights_two_levels(model, GAUSSIAN, x, seed=7, k=300, chunk=17)
    np.testing.assert_allclose(
        np.log(np.mean(np.exp(weights - weights.max(1, keepdims=True)), 1)) + weights.max(1),
        batch.log_likelihood,
        rtol=0,
        atol=1e-9,
    )


def test_the_kl_of_two_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mq, lq, mp, lp = (rng.normal(size=(4, 3)) for _ in range(4))
    z = dist.reparameterize(mq, lq, rng.standard_normal((200_000, 4, 3)))
    monte_carlo = (dist.log_normal_diag(z, mq, lq) - dist.log_normal_diag(z, mp, lp)).mean(0)
    np.testing.assert_allclose(kl_normal_diag(mq, lq, mp, lp), monte_carlo, atol=0.03)
    assert np.allclose(kl_normal_diag(mq, lq, mq, lq), 0.0)
