"""Log-densities and divergences in numpy: the math shared by `vae-eval` and the service.

Pure functions on arrays; the last axis (or the image axes) is summed. Shapes in comments:
K samples, D latent dimensions, P = C*H*W pixels. The likelihoods' torch twins used for training are
in `model/core/likelihoods.py`, the KL's in `model/losses.py`; the unit tests check that they agree.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

LOG_2PI = math.log(2.0 * math.pi)


def log_bernoulli(x: np.ndarray, logits: np.ndarray) -> NDArray[np.float64]:
    """sum_p log Bernoulli(x_p | sigmoid(l_p)) = x*l - softplus(l).  x (P,) or (K, P), logits (K, P) -> (K,)

    softplus(l) = max(l, 0) + log1p(exp(-|l|)) in float32 is stable and far cheaper than float64 logaddexp
    on the IWAE's (K, P) arrays (docs/design/decoder-cost.md); the sum over pixels is accumulated in float64.
    """
    softplus = np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits)))
    log_p: NDArray[np.float64] = (x * logits - softplus).sum(axis=-1, dtype=np.float64)
    return log_p


def log_gaussian(x: np.ndarray, mean: np.ndarray, log_scale: np.ndarray) -> NDArray[np.float64]:
    """log N(x | mean, exp(log_scale)^2) summed over pixels.  x (P,) or (K, P), mean and log_scale (K, P) -> (K,)"""
    log_scale = log_scale.astype(np.float64)
    z = (x - mean.astype(np.float64)) * np.exp(-log_scale)
    log_p: NDArray[np.float64] = (-0.5 * z * z - log_scale - 0.5 * LOG_2PI).sum(axis=-1)
    return log_p


def log_standard_normal(z: np.ndarray) -> NDArray[np.float64]:
    """log N(z | 0, I).  (K, D) -> (K,)"""
    z = z.astype(np.float64)
    log_p: NDArray[np.float64] = (-0.5 * z * z - 0.5 * LOG_2PI).sum(axis=-1)
    return log_p


def log_normal_diag(z: np.ndarray, mean: np.ndarray, logvar: np.ndarray) -> NDArray[np.float64]:
    """log N(z | mean, diag(exp(logvar))).  (K, D) -> (K,)"""
    z, mean, logvar = (a.astype(np.float64) for a in (z, mean, logvar))
    log_p: NDArray[np.float64] = (-0.5 * ((z - mean) ** 2 * np.exp(-logvar) + logvar + LOG_2PI)).sum(axis=-1)
    return log_p


def kl_standard_normal(mean: np.ndarray, logvar: np.ndarray) -> NDArray[np.float64]:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)), analytic (Kingma & Welling 2014, app. B).  (N, D) -> (N,)"""
    mean, logvar = mean.astype(np.float64), logvar.astype(np.float64)
    kl: NDArray[np.float64] = 0.5 * (mean * mean + np.exp(logvar) - 1.0 - logvar).sum(axis=-1)
    return kl


def reparameterize(mean: np.ndarray, logvar: np.ndarray, eps: np.ndarray) -> NDArray[np.float32]:
    """z = mean + sigma * eps with sigma = exp(logvar / 2). Noise comes from the caller."""
    z: NDArray[np.float32] = (mean + np.exp(0.5 * logvar) * eps).astype(np.float32)
    return z


@overload
def bits_per_dim(nats: float, dims: int) -> float: ...
@overload
def bits_per_dim(nats: np.ndarray, dims: int) -> np.ndarray: ...
def bits_per_dim(nats: float | np.ndarray, dims: int) -> float | np.ndarray:
    """Nats per image -> bits per dimension (works on floats and arrays)."""
    return nats / (dims * math.log(2.0))


def log_mean_exp_standard_error(log_sum: ArrayLike, log_sum_squares: ArrayLike, k: ArrayLike) -> NDArray[np.float64]:
    """Monte Carlo standard error of log((1/k) sum_i w_i), from log sum w and log sum w^2 (arrays or floats).

    The delta method on the mean of the weights: se = std(w) / (sqrt(k) * mean(w)), with the sample
    standard deviation (k - 1 in the variance). In the two sums that is sqrt((k sum w^2 / (sum w)^2 - 1) /
    (k - 1)) = sqrt((k / ESS - 1) / (k - 1)), computed from logs because the weights themselves under-
    or overflow (log p(x|z) is hundreds of nats). nan for k < 2. It is itself an estimate: when a few
    huge weights were never drawn (small ESS), it understates the error."""
    log_sum, log_sum_squares = np.asarray(log_sum, dtype=np.float64), np.asarray(log_sum_squares, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = np.expm1(np.log(k) + log_sum_squares - 2.0 * log_sum)  # k sum w^2 / (sum w)^2 - 1 >= 0
        se = np.sqrt(np.maximum(excess, 0.0) / (k - 1.0))
    return np.where(k >= 2, se, np.nan)


def effective_sample_size(log_sum: ArrayLike, log_sum_squares: ArrayLike) -> NDArray[np.float64]:
    """Kish's effective sample size of normalised weights, (sum w)^2 / sum w^2, from the logs of the two
    sums: 1 when one weight carries everything, k when all k are equal."""
    log_sum, log_sum_squares = np.asarray(log_sum, dtype=np.float64), np.asarray(log_sum_squares, dtype=np.float64)
    ess: NDArray[np.float64] = np.exp(2.0 * log_sum - log_sum_squares)
    return ess
