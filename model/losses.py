"""The training objective in torch: ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)).

Pure functions; the numpy twins used for evaluation and serving are in `model/distributions.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps (Kingma & Welling 2014, eq. 10); differentiable in mu and logvar."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).  (B, D) -> (B,)"""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """sum_p log Bernoulli(x_p | sigmoid(l_p)).  (B, C, H, W) -> (B,)"""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


def log_gaussian(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """sum_p log N(x_p | mean_p, exp(log_scale_p)^2).  (B, C, H, W) -> (B,)"""
    z = (x - mean) * torch.exp(-log_scale)
    return (-0.5 * z.pow(2) - log_scale - 0.5 * LOG_2PI).flatten(1).sum(dim=1)


def log_likelihood(likelihood: str, x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if likelihood == "bernoulli":
        return log_bernoulli(x, params[0])
    if likelihood == "gaussian":
        return log_gaussian(x, params[0], params[1])
    raise ValueError(f"unknown likelihood {likelihood!r}")


def elbo_terms(log_px_z: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-example ELBO and the beta-weighted objective that training minimises (as -objective)."""
    return {"reconstruction": log_px_z, "kl": kl, "elbo": log_px_z - kl, "objective": log_px_z - beta * kl}
