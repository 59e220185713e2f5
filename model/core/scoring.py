"""Per-image ELBO and log p(x) estimates from any encode/decode backend, with seeded noise.

`vae-eval` runs it over torch; the service runs it over onnxruntime. Both draw noise the same
way, from one stream per image, `model.core.preprocess.image_stream(seed, x)`, keyed by the seed and
the image's content (never its position in the set or the request). The ELBO's single sample
comes first from that stream, then the k samples of the log p(x) estimator, in chunks. So an image
scores the same alone, in any batch, at any position, and on both sides.

The prior p(z) is the backend's (`model.core.priors`): N(0, I), or a learned mixture. The ELBO's KL is
analytic for N(0, I) and the one-sample estimate log q(z|x) - log p(z) at the ELBO's z for a mixture.

Two estimators of log p(x) = log E[w] share that noise eps ~ N(0, I):
- `importance` (IWAE, Burda et al. 2016): z = mean + sigma * eps ~ q(z|x), w = p(x|z) p(z) / q(z|x);
- `prior`, the naive Monte Carlo estimate: z ~ p(z) built from eps (z = eps for N(0, I); a mixture adds
  a component per sample, drawn from a child of the image's stream), w = p(x|z). Almost every z from the
  prior decodes to another image, so almost all the weight sits in the rare z near x: its effective sample
  size stays near 1 and the estimate far below log p(x) at any k a computer can afford.
Each reports the estimate log (1/k) sum w, its Monte Carlo standard error and the effective sample size
of the weights (`model.core.distributions`), from running sums of w and w^2 in log space.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from model.core import distributions as dist
from model.core.likelihoods import Likelihood
from model.core.preprocess import image_stream
from model.core.priors import Prior, StandardNormal


class Backend(Protocol):
    """The two deterministic halves of a VAE, on numpy arrays, and its prior."""

    @property
    def prior(self) -> Prior:
        """p(z); optional: a backend without one has N(0, I) (`prior_of`)"""

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 -> mean (N, D), logvar (N, D)"""

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """(K, D) float32 -> the likelihood's parameters, each (K, C, H, W)"""


def prior_of(backend: Backend, latent_dim: int) -> Prior:
    """The backend's prior; N(0, I) for a backend that has none (test doubles, backends older than priors)."""
    prior = getattr(backend, "prior", None)
    return prior if prior is not None else StandardNormal(latent_dim)


class Estimator(ABC):
    """Where the k latents of a log p(x) estimate come from, and how each is weighted."""

    name: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def latents(
        self,
        prior: Prior,
        mean: np.ndarray,
        logvar: np.ndarray,
        eps: np.ndarray,
        components: np.random.Generator | None,
    ) -> np.ndarray:
        """q(z|x)'s mean (D,) and logvar (D,), noise eps (K, D), and the stream of the prior's components
        (`Prior.component_stream`) -> z (K, D), float32"""

    @abstractmethod
    def log_weights(
        self, prior: Prior, log_px_z: np.ndarray, z: np.ndarray, mean: np.ndarray, logvar: np.ndarray
    ) -> np.ndarray:
        """log p(x|z) (K,) and z (K, D) -> log w (K,), with E[w] = p(x)"""


class ImportanceSampling(Estimator):
    name = "importance"
    description = "z ~ q(z|x), w = p(x|z) p(z) / q(z|x) (IWAE)"

    def latents(
        self,
        prior: Prior,
        mean: np.ndarray,
        logvar: np.ndarray,
        eps: np.ndarray,
        components: np.random.Generator | None,
    ) -> np.ndarray:
        return dist.reparameterize(mean, logvar, eps)

    def log_weights(
        self, prior: Prior, log_px_z: np.ndarray, z: np.ndarray, mean: np.ndarray, logvar: np.ndarray
    ) -> np.ndarray:
        return log_px_z + prior.log_prob(z) - dist.log_normal_diag(z, mean, logvar)


class PriorSampling(Estimator):
    name = "prior"
    description = "z ~ p(z), the model's prior, w = p(x|z) (naive Monte Carlo)"

    def latents(
        self,
        prior: Prior,
        mean: np.ndarray,
        logvar: np.ndarray,
        eps: np.ndarray,
        components: np.random.Generator | None,
    ) -> np.ndarray:
        return prior.from_noise(eps, components)

    def log_weights(
        self, prior: Prior, log_px_z: np.ndarray, z: np.ndarray, mean: np.ndarray, logvar: np.ndarray
    ) -> np.ndarray:
        return log_px_z


ESTIMATORS: dict[str, Estimator] = {e.name: e for e in (ImportanceSampling(), PriorSampling())}


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}") from None


@dataclass(frozen=True)
class WeightSums:
    """log sum w and log sum w^2 over k weights: enough for the estimate, its standard error and ESS."""

    log_sum: float = -math.inf
    log_sum_squares: float = -math.inf
    k: int = 0

    def add(self, log_w: np.ndarray) -> WeightSums:
        return WeightSums(
            float(np.logaddexp(self.log_sum, _logsumexp(log_w))),
            float(np.logaddexp(self.log_sum_squares, _logsumexp(2.0 * log_w))),
            self.k + len(log_w),
        )

    @property
    def estimate(self) -> float:
        return self.log_sum - math.log(self.k)

    @property
    def standard_error(self) -> float:
        return float(dist.log_mean_exp_standard_error(self.log_sum, self.log_sum_squares, self.k))

    @property
    def effective_sample_size(self) -> float:
        return float(dist.effective_sample_size(self.log_sum, self.log_sum_squares))


@dataclass(frozen=True)
class Scores:
    """Per-image scores in nats (arrays of shape (N,)). For a Gaussian likelihood the
    reconstruction and log-likelihood are of the 8-bit image (dequantisation bin 1/256)."""

    elbo: np.ndarray
    reconstruction: np.ndarray
    kl: np.ndarray  # analytic for N(0, I); log q(z|x) - log p(z) at the ELBO's z for a mixture prior
    log_likelihood: np.ndarray | None  # the estimator's log p(x); None when k == 1
    k: int
    dims: int
    posterior_mean: np.ndarray | None = None  # (N, D), q(z|x)'s mean, for statistics beyond the ELBO
    posterior_logvar: np.ndarray | None = None  # (N, D)
    estimator: str = ImportanceSampling.name
    standard_error: np.ndarray | None = None  # of log_likelihood; None when k == 1
    effective_sample_size: np.ndarray | None = None  # of the k weights; None when k == 1

    @property
    def bits_per_dim(self) -> np.ndarray:
        """-ELBO in bits per dimension (an upper bound on the true figure)."""
        return dist.bits_per_dim(-self.elbo, self.dims)

    @property
    def log_likelihood_bits_per_dim(self) -> np.ndarray | None:
        return None if self.log_likelihood is None else dist.bits_per_dim(-self.log_likelihood, self.dims)


def score(
    backend: Backend,
    likelihood: Likelihood,
    x: np.ndarray,
    seed: int,
    k: int = 1,
    chunk: int = 1000,
    estimator: str = ImportanceSampling.name,
) -> Scores:
    """ELBO (one reparameterised sample, and the prior's KL: `Prior.kl`) and, for k > 1, the estimator's
    log (1/k) sum_i w_i with its standard error and ESS, for a batch of images x in the likelihood's
    data space, shape (N, C, H, W)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    chosen = get_estimator(estimator)
    count, dims = x.shape[0], int(np.prod(x.shape[1:]))
    x = x.astype(np.float32, copy=False)
    mean, logvar = backend.encode(x)  # (N, D), (N, D)
    prior = prior_of(backend, mean.shape[1])
    streams = [image_stream(seed, image) for image in x]
    eps = np.stack([s.standard_normal(mean.shape[1], dtype=np.float32) for s in streams])  # (N, D)
    z = dist.reparameterize(mean, logvar, eps)  # (N, D)
    params = backend.decode(z)
    flat_x = x.reshape(count, -1)
    reconstruction = likelihood.log_prob_8bit(flat_x, params)  # (N,)
    kl = prior.kl(z, mean, logvar)  # (N,)
    sums = None
    if k > 1:
        sums = [
            _weight_sums(
                _log_weight_chunks(
                    backend, prior, likelihood, chosen, flat_x[i], mean[i], logvar[i], streams[i], k, chunk
                )
            )
            for i in range(count)
        ]
    return assemble_scores(reconstruction, kl, sums, k, dims, (mean, logvar), chosen.name)


def assemble_scores(
    reconstruction: np.ndarray,
    kl: np.ndarray,
    sums: list[WeightSums] | None,
    k: int,
    dims: int,
    posterior: tuple[np.ndarray, np.ndarray],
    estimator: str,
) -> Scores:
    """The scores of a batch: its ELBO's terms, each image's weight sums (None when k == 1) and q's
    mean and log-variance."""
    estimates = {}
    if sums is not None:
        estimates = {
            "log_likelihood": np.array([s.estimate for s in sums]),
            "standard_error": np.array([s.standard_error for s in sums]),
            "effective_sample_size": np.array([s.effective_sample_size for s in sums]),
        }
    return Scores(
        elbo=reconstruction - kl,
        reconstruction=reconstruction,
        kl=kl,
        log_likelihood=estimates.get("log_likelihood"),
        k=k,
        dims=dims,
        posterior_mean=posterior[0],
        posterior_logvar=posterior[1],
        estimator=estimator,
        standard_error=estimates.get("standard_error"),
        effective_sample_size=estimates.get("effective_sample_size"),
    )


def log_weights(
    backend: Backend,
    likelihood: Likelihood,
    x: np.ndarray,
    seed: int,
    k: int,
    estimator: str = ImportanceSampling.name,
    chunk: int = 1000,
) -> np.ndarray:
    """The k log-weights per image that `score` sums, in the order drawn: (N, C, H, W) -> (N, k).
    Their first j are the weights of `score` with k = j, so one draw gives the estimate at every k."""
    chosen = get_estimator(estimator)
    x = x.astype(np.float32, copy=False)
    mean, logvar = backend.encode(x)  # (N, D), (N, D)
    prior = prior_of(backend, mean.shape[1])
    rows = []
    for i, image in enumerate(x):
        stream = image_stream(seed, image)
        stream.standard_normal(mean.shape[1], dtype=np.float32)  # the ELBO's draw comes first, as in `score`
        rows.append(
            np.concatenate(
                list(
                    _log_weight_chunks(
                        backend, prior, likelihood, chosen, image.reshape(-1), mean[i], logvar[i], stream, k, chunk
                    )
                )
            )
        )
    return np.stack(rows)


def _log_weight_chunks(
    backend: Backend,
    prior: Prior,
    likelihood: Likelihood,
    estimator: Estimator,
    x: np.ndarray,
    mean: np.ndarray,
    logvar: np.ndarray,
    stream: np.random.Generator,
    k: int,
    chunk: int,
) -> Iterator[np.ndarray]:
    """log w of one image's k samples, `chunk` decodes at a time, so k=5000 needs one chunk of memory."""
    components = prior.component_stream(stream)  # before any eps: the same child at any chunk size
    for start in range(0, k, chunk):
        size = min(chunk, k - start)
        eps = stream.standard_normal((size, mean.shape[0]), dtype=np.float32)  # (c, D)
        z = estimator.latents(prior, mean, logvar, eps, components)  # (c, D)
        log_px_z = likelihood.log_prob_8bit(x, backend.decode(z))  # (c,)
        yield estimator.log_weights(prior, log_px_z, z, mean, logvar)  # (c,)


def _weight_sums(chunks: Iterator[np.ndarray]) -> WeightSums:
    sums = WeightSums()
    for log_w in chunks:
        sums = sums.add(log_w)
    return sums


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + math.log(float(np.sum(np.exp(values - top))))


def summarize(scores: Scores) -> dict[str, float | int | None]:
    """Test-set means, as recorded in report.json and the manifest."""
    ll, ll_bits_per_dim = scores.log_likelihood, scores.log_likelihood_bits_per_dim
    return {
        "images": int(scores.elbo.shape[0]),
        "elbo": float(np.mean(scores.elbo)),
        "reconstruction": float(np.mean(scores.reconstruction)),
        "kl": float(np.mean(scores.kl)),
        "nll_elbo_nats": float(-np.mean(scores.elbo)),
        "bits_per_dim_elbo": float(np.mean(scores.bits_per_dim)),
        "iwae_k": scores.k if ll is not None else None,
        "log_likelihood": None if ll is None else float(np.mean(ll)),
        "nll_nats": None if ll is None else float(-np.mean(ll)),
        "bits_per_dim": None if ll_bits_per_dim is None else float(np.mean(ll_bits_per_dim)),
    }
