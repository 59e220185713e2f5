"""Per-image ELBO and IWAE scores from any encode/decode backend, with seeded noise.

`vae-eval` runs it over torch; the service runs it over onnxruntime. Both draw noise the same
way, from one stream per image, `model.core.preprocess.image_stream(seed, x)`, keyed by the seed and
the image's content (never its position in the set or the request). The ELBO's single sample
comes first from that stream, then the k importance samples, in chunks. So an image scores the
same alone, in any batch, at any position, and on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from model.core import distributions as dist
from model.core.likelihoods import Likelihood
from model.core.preprocess import image_stream


class Backend(Protocol):
    """The two deterministic halves of a VAE, on numpy arrays."""

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) float32 -> mean (N, D), logvar (N, D)"""

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """(K, D) float32 -> the likelihood's parameters, each (K, C, H, W)"""


@dataclass(frozen=True)
class Scores:
    """Per-image scores in nats (arrays of shape (N,)). For a Gaussian likelihood the
    reconstruction and log-likelihood are of the 8-bit image (dequantisation bin 1/256)."""

    elbo: np.ndarray
    reconstruction: np.ndarray
    kl: np.ndarray
    log_likelihood: np.ndarray | None  # IWAE estimate; None when k == 1
    k: int
    dims: int
    posterior_mean: np.ndarray | None = None  # (N, D), q(z|x)'s mean, for statistics beyond the ELBO
    posterior_logvar: np.ndarray | None = None  # (N, D)

    @property
    def bits_per_dim(self) -> np.ndarray:
        """-ELBO in bits per dimension (an upper bound on the true figure)."""
        return dist.bits_per_dim(-self.elbo, self.dims)

    @property
    def log_likelihood_bits_per_dim(self) -> np.ndarray | None:
        return None if self.log_likelihood is None else dist.bits_per_dim(-self.log_likelihood, self.dims)


def score(backend: Backend, likelihood: Likelihood, x: np.ndarray, seed: int, k: int = 1, chunk: int = 1000) -> Scores:
    """ELBO (one reparameterised sample + analytic KL) and, for k > 1, the IWAE estimate
    log (1/k) sum_i p(x, z_i) / q(z_i | x) (Burda et al. 2016), for a batch of images x in
    the likelihood's data space, shape (N, C, H, W)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    count, dims = x.shape[0], int(np.prod(x.shape[1:]))
    x = x.astype(np.float32, copy=False)
    mean, logvar = backend.encode(x)  # (N, D), (N, D)
    streams = [image_stream(seed, image) for image in x]
    eps = np.stack([s.standard_normal(mean.shape[1], dtype=np.float32) for s in streams])  # (N, D)
    params = backend.decode(dist.reparameterize(mean, logvar, eps))
    flat_x = x.reshape(count, -1)
    reconstruction = likelihood.log_prob_8bit(flat_x, params)  # (N,)
    kl = dist.kl_standard_normal(mean, logvar)  # (N,)
    iwae = None
    if k > 1:
        iwae = np.array([
            _iwae_one(backend, likelihood, flat_x[i], mean[i], logvar[i], streams[i], k, chunk)
            for i in range(count)
        ])
    return Scores(elbo=reconstruction - kl, reconstruction=reconstruction, kl=kl, log_likelihood=iwae, k=k, dims=dims,
                  posterior_mean=mean, posterior_logvar=logvar)


def _iwae_one(backend: Backend, likelihood: Likelihood, x: np.ndarray, mean: np.ndarray, logvar: np.ndarray,
              stream: np.random.Generator, k: int, chunk: int) -> float:
    """Running logsumexp over chunks of importance samples, so k=5000 needs one chunk of memory."""
    running = -math.inf
    for start in range(0, k, chunk):
        size = min(chunk, k - start)
        eps = stream.standard_normal((size, mean.shape[0]), dtype=np.float32)  # (c, D)
        z = dist.reparameterize(mean, logvar, eps)
        log_w = (likelihood.log_prob_8bit(x, backend.decode(z))
                 + dist.log_standard_normal(z) - dist.log_normal_diag(z, mean, logvar))  # (c,)
        running = float(np.logaddexp(running, _logsumexp(log_w)))
    return running - math.log(k)


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + math.log(float(np.sum(np.exp(values - top))))


def summarize(scores: Scores) -> dict[str, float | int | None]:
    """Test-set means, as recorded in report.json and the manifest."""
    ll = scores.log_likelihood
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
        "bits_per_dim": None if ll is None else float(np.mean(scores.log_likelihood_bits_per_dim)),
    }

