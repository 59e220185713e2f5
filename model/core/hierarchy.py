"""Two stochastic levels, z2 -> z1 -> x: the ELBO and the log p(x) estimators of `model.core.scoring` for
a hierarchical VAE (issue 33), on numpy, for any backend that runs its four deterministic parts.

The model is the two-level VAE of Tomczak & Welling (2018, "VAE with a VampPrior", section 3.2), whose
dense and convolutional forms are the HVAE and ConvHVAE rows of the Exemplar VAE table:

- generative: z2 ~ p(z2), the model's prior (`model.core.priors`: N(0, I) or a learned mixture);
  z1 | z2 ~ N(m(z2), diag(v(z2))) from a network (`lower_prior`); x | z1, z2 from the likelihood's
  parameters (`decode`);
- inference: z2 ~ q(z2 | x), then z1 ~ q(z1 | x, z2), both diagonal Gaussians; the first from the
  image (`encode`, which also gives the image's features h), the second from h and z2 (`encode_lower`),
  so the image's own network runs once however many z2 are drawn.

A sample's importance weight holds every level's prior and posterior terms:

    log w = log p(x | z1, z2) + log p(z1 | z2) + log p(z2) - log q(z1 | x, z2) - log q(z2 | x).

The ELBO's KL is KL(q(z2|x) || p(z2)) as the prior gives it (analytic for N(0, I), the one-sample
estimate for a mixture) plus KL(q(z1|x,z2) || p(z1|z2)) at the ELBO's z2, analytic: both are diagonal
Gaussians once z2 is fixed.

Noise comes from the image's stream (`model.core.preprocess.image_stream`) as for one level: the ELBO's
draw first, then the prior's component stream (a child: chunking cannot reorder it), then the k samples
of the estimator, `chunk` at a time. Each sample's noise is one draw of D2 + D1 numbers, eps2 then eps1,
so the stream is read sample by sample whatever the chunk: an image scores the same alone, in any batch
and at any chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from model.core import distributions as dist
from model.core import scoring
from model.core.likelihoods import Likelihood
from model.core.preprocess import image_stream
from model.core.priors import Prior
from model.core.scoring import ImportanceSampling, PriorSampling, Scores, WeightSums, assemble_scores

ESTIMATORS = (ImportanceSampling.name, PriorSampling.name)


class TwoLevelBackend(Protocol):
    """The four deterministic parts of a two-level VAE on numpy arrays, and its top prior p(z2)."""

    @property
    def prior(self) -> Prior:
        """p(z2)"""

    @property
    def lower_latent_dim(self) -> int:
        """D1, the numbers of z1 per image"""

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 -> q(z2|x)'s mean (N, D2), logvar (N, D2), and the image's features (N, F)"""

    def encode_lower(self, features: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """features (K, F), z2 (K, D2) -> q(z1|x, z2)'s mean (K, D1), logvar (K, D1)"""

    def lower_prior(self, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z2 (K, D2) -> p(z1|z2)'s mean (K, D1), logvar (K, D1)"""

    def decode(self, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, ...]:
        """z1 (K, D1), z2 (K, D2) -> the likelihood's parameters, each (K, C, H, W)"""


def two_levels(backend: object) -> bool:
    """Whether `backend` is a `TwoLevelBackend` (its lower level's posterior is the mark) rather than a
    one-level `model.core.scoring.Backend`."""
    return callable(getattr(backend, "encode_lower", None))


def score(
    backend: Any,
    likelihood: Likelihood,
    x: np.ndarray,
    seed: int,
    k: int = 1,
    chunk: int = 1000,
    estimator: str = ImportanceSampling.name,
) -> Scores:
    """`score_two_levels` for a two-level backend, `model.core.scoring.score` for one level: what every
    caller that takes either (vae-eval, the service's scores, the anomaly statistics) calls."""
    if two_levels(backend):
        return score_two_levels(backend, likelihood, x, seed, k=k, chunk=chunk, estimator=estimator)
    return scoring.score(backend, likelihood, x, seed, k=k, chunk=chunk, estimator=estimator)


def kl_normal_diag(
    mean_q: np.ndarray, logvar_q: np.ndarray, mean_p: np.ndarray, logvar_p: np.ndarray
) -> NDArray[np.float64]:
    """KL(N(mean_q, diag(exp(logvar_q))) || N(mean_p, diag(exp(logvar_p)))), analytic.  (N, D) -> (N,)"""
    mq, lq, mp, lp = (a.astype(np.float64) for a in (mean_q, logvar_q, mean_p, logvar_p))
    kl: NDArray[np.float64] = 0.5 * (lp - lq + (np.exp(lq) + (mq - mp) ** 2) * np.exp(-lp) - 1.0).sum(axis=-1)
    return kl


def score_two_levels(
    backend: TwoLevelBackend,
    likelihood: Likelihood,
    x: np.ndarray,
    seed: int,
    k: int = 1,
    chunk: int = 1000,
    estimator: str = ImportanceSampling.name,
) -> Scores:
    """`model.core.scoring.score` for two levels: the ELBO of one sample (module docstring) and, for k > 1,
    the estimator's log (1/k) sum w with its standard error and effective sample size, for images x in the
    likelihood's data space (N, C, H, W). The scores' posterior is q(z2 | x)'s."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    count, dims = x.shape[0], int(np.prod(x.shape[1:]))
    x = x.astype(np.float32, copy=False)
    mean2, logvar2, features = backend.encode(x)
    prior, upper = backend.prior, mean2.shape[1]
    lower = backend.lower_latent_dim
    streams = [image_stream(seed, image) for image in x]
    eps = np.stack([s.standard_normal(upper + lower, dtype=np.float32) for s in streams])  # (N, D2 + D1)
    z2 = dist.reparameterize(mean2, logvar2, eps[:, :upper])  # (N, D2)
    mean1, logvar1 = backend.encode_lower(features, z2)
    z1 = dist.reparameterize(mean1, logvar1, eps[:, upper:])  # (N, D1)
    flat_x = x.reshape(count, -1)
    reconstruction = likelihood.log_prob_8bit(flat_x, backend.decode(z1, z2))
    kl = prior.kl(z2, mean2, logvar2) + kl_normal_diag(mean1, logvar1, *backend.lower_prior(z2))
    sums = None
    if k > 1:
        sums = []
        for i in range(count):
            total = WeightSums()
            posterior = (features[i], mean2[i], logvar2[i])
            chunks = _log_weight_chunks(
                backend, likelihood, estimator, flat_x[i], posterior, streams[i], k, chunk, lower
            )
            for log_w in chunks:
                total = total.add(log_w)
            sums.append(total)
    return assemble_scores(reconstruction, kl, sums, k, dims, (mean2, logvar2), estimator)


def _log_weight_chunks(
    backend: TwoLevelBackend,
    likelihood: Likelihood,
    estimator: str,
    x: np.ndarray,
    posterior: tuple[np.ndarray, np.ndarray, np.ndarray],
    stream: np.random.Generator,
    k: int,
    chunk: int,
    lower: int,
) -> Iterator[NDArray[np.float64]]:
    """log w of one image's k samples (module docstring), `chunk` at a time. `posterior`: the image's
    features (F,) and q(z2|x)'s mean (D2,) and logvar (D2,); the stream has given the ELBO's draw;
    `lower`: D1 (the backend's `lower_latent_dim`)."""
    features, mean2, logvar2 = posterior
    prior, upper = backend.prior, mean2.shape[0]
    components = prior.component_stream(stream)  # before any eps: the same child at any chunk size
    for start in range(0, k, chunk):
        size = min(chunk, k - start)
        eps = stream.standard_normal((size, upper + lower), dtype=np.float32)  # sample by sample: chunk-proof
        eps2, eps1 = eps[:, :upper], eps[:, upper:]
        if estimator == PriorSampling.name:  # z2 ~ p(z2), z1 ~ p(z1|z2), w = p(x|z1,z2)
            z2 = prior.from_noise(eps2, components)
            z1 = dist.reparameterize(*backend.lower_prior(z2), eps1)
            yield likelihood.log_prob_8bit(x, backend.decode(z1, z2))
            continue
        z2 = dist.reparameterize(mean2, logvar2, eps2)  # (c, D2)
        mean1, logvar1 = backend.encode_lower(np.broadcast_to(features, (size, *features.shape)), z2)
        z1 = dist.reparameterize(mean1, logvar1, eps1)  # (c, D1)
        log_px = likelihood.log_prob_8bit(x, backend.decode(z1, z2))
        log_prior = prior.log_prob(z2) + dist.log_normal_diag(z1, *backend.lower_prior(z2))
        log_posterior = dist.log_normal_diag(z2, mean2, logvar2) + dist.log_normal_diag(z1, mean1, logvar1)
        yield log_px + log_prior - log_posterior


def log_weights_two_levels(
    backend: TwoLevelBackend,
    likelihood: Likelihood,
    x: np.ndarray,
    seed: int,
    k: int,
    estimator: str = ImportanceSampling.name,
    chunk: int = 1000,
) -> NDArray[np.float64]:
    """The k log-weights per image that `score_two_levels` sums, in the order drawn: (N, C, H, W) -> (N, k)."""
    x = x.astype(np.float32, copy=False)
    mean2, logvar2, features = backend.encode(x)
    lower = backend.lower_latent_dim
    rows = []
    for i, image in enumerate(x):
        stream = image_stream(seed, image)
        stream.standard_normal(mean2.shape[1] + lower, dtype=np.float32)  # the ELBO's draw comes first
        posterior = (features[i], mean2[i], logvar2[i])
        chunks = _log_weight_chunks(
            backend, likelihood, estimator, image.reshape(-1), posterior, stream, k, chunk, lower
        )
        rows.append(np.concatenate(list(chunks)))
    return np.stack(rows)
