"""The training objective in torch: ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)).

Pure functions; log p(x|z) is the likelihood's `torch_log_prob` (model/core/likelihoods.py), and the
numpy twins used for evaluation and serving are in `model/core/distributions.py`.
"""

from __future__ import annotations

import torch


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps (Kingma & Welling 2014, eq. 10); differentiable in mu and logvar."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).  (B, D) -> (B,)"""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def elbo_terms(log_px_z: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-example ELBO and the beta-weighted objective that training minimises (as -objective)."""
    return {"reconstruction": log_px_z, "kl": kl, "elbo": log_px_z - kl, "objective": log_px_z - beta * kl}
