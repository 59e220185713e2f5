"""The training objective in torch: ELBO = E_q[log p(x|z)] - KL(q(z|x) || N(0, I)).

Pure functions; log p(x|z) is the likelihood's `torch_log_prob` (model/core/likelihoods.py), and the
numpy twins used for evaluation and serving are in `model/core/distributions.py`.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps (Kingma & Welling 2014, eq. 10); differentiable in mu and logvar."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2).  (B, D) -> (B,)"""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def kl_estimate(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """One-sample estimate log q(z|x) - log p(z) of the KL, for a prior without a closed form.  -> (B,)"""
    return log_normal_diag(z, mean, logvar) - log_prior


def log_normal_diag(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z | mean, diag(exp(logvar))), summed over the last axis."""
    return -0.5 * ((z - mean).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1)


def iwae_dreg_terms(
    log_px_z: torch.Tensor, log_pz: torch.Tensor, log_qz: torch.Tensor, z: torch.Tensor | tuple[torch.Tensor, ...]
) -> dict[str, torch.Tensor]:
    """The IWAE bound log (1/S) sum_s w_s over S samples, with the DReG encoder gradient (Tucker et al. 2019).

    log_px_z, log_pz, log_qz: (S, B); log_qz must use q's parameters detached, so the encoder is reached
    only through z = mean + sigma * eps (S, B, D). The bound's gradient at z is sum_s w~_s d log w_s / dz_s;
    DReG's is sum_s w~_s^2 d log w_s / dz_s, so a hook multiplies z's gradient by w~_s. The decoder's and the
    prior's gradients are the IWAE bound's own, untouched. Its variance does not grow with S the way the
    plain IWAE encoder gradient's signal-to-noise ratio collapses (Rainforth et al. 2018).

    With several levels, `z` is every level's sample as log w reads it, each (S, B, D_level), and each path
    from log w to the encoder must pass exactly one of them (model/hierarchy_loss.py)."""
    log_w = log_px_z + log_pz - log_qz  # (S, B)
    normalised = torch.softmax(log_w.detach(), dim=0)  # (S, B)
    for sample in z if isinstance(z, tuple) else (z,):
        if sample.requires_grad:
            sample.register_hook(lambda grad: grad * normalised.unsqueeze(-1))
    bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])  # (B,)
    return {
        "reconstruction": log_px_z.detach().mean(0),
        "kl": (log_qz - log_pz).detach().mean(0),
        "elbo": log_w.detach().mean(0),
        "iwae": bound.detach(),
        "objective": bound,
    }


def elbo_terms(log_px_z: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-example ELBO and the beta-weighted objective that training minimises (as -objective)."""
    return {"reconstruction": log_px_z, "kl": kl, "elbo": log_px_z - kl, "objective": log_px_z - beta * kl}
