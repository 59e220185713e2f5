"""The training objectives of a two-level VAE (z2 -> z1 -> x; model/vae.py, docs/design/hierarchy.md), the
torch twins of `model.core.hierarchy`'s estimators.

The ELBO: log p(x | z1, z2) - KL(q(z2|x) || p(z2)) - KL(q(z1|x,z2) || p(z1|z2)) at one sample, the first KL
as the prior gives it (analytic or the one-sample estimate), the second analytic given z2.

The IWAE bound over S samples, with DReG encoder gradients (model/losses.py: iwae_dreg_terms), needs two
things a single level does not:

- log q(z1 | x, z2) with the encoder's parameters stopped but as a function of z2: q's lower network is
  run again with its parameters detached (torch.func.functional_call) on the image's features detached;
- each path from log w to the encoder scaled once. z1 is drawn from q(z1 | x, z2), which reads z2: were
  both z1 and z2 hooked, the path log w -> z1 -> z2 would be scaled twice. So log w reads z2 through a
  view of its own (`z2_read`), which carries the hook, and the draw of z1 reads z2 itself.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from model import losses
from model.core import likelihoods
from model.vae import VAE, Lower


def kl_normal_diag(
    mean_q: torch.Tensor, logvar_q: torch.Tensor, mean_p: torch.Tensor, logvar_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, diag(exp(logvar_q))) || N(mean_p, diag(exp(logvar_p)))), analytic.  (..., D) -> (...)"""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p).pow(2)) * (-logvar_p).exp() - 1.0).sum(-1)


def _stopped_posterior(lower: Lower, features: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z1 | x, z2)'s mean and logvar with the encoder's parameters (its lower network's, and through the
    features the trunk's) stopped: gradients reach z2 only."""
    detached = {name: p.detach() for name, p in lower.posterior_net.named_parameters()}
    out = functional_call(lower.posterior_net, detached, (torch.cat([features.detach(), z2], dim=-1),))
    mean, logvar = out.chunk(2, dim=-1)
    return mean, logvar.clamp(lower.logvar_min, lower.logvar_max)


def two_level_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per-image terms of x (B, C, H, W) for a two-level VAE: with eps (B, D2 + D1) the ELBO, with eps
    (S, B, D2 + D1) the IWAE bound over S samples with DReG encoder gradients. Each sample's noise is its
    top level's D2 numbers, then its lower level's, as `model.core.hierarchy` draws them."""
    lower = model.lower
    assert lower is not None, "a two-level VAE"
    likelihood = likelihoods.get(model.config.likelihood)
    upper = model.config.latent_dim
    features = model.encoder.body(x)  # (B, F)
    mean2, logvar2 = model.encoder.posterior(features)
    if eps.dim() == 2:
        z2 = losses.reparameterize(mean2, logvar2, eps[:, :upper])
        mean1, logvar1 = lower.posterior(features, z2)
        z1 = losses.reparameterize(mean1, logvar1, eps[:, upper:])
        log_px = likelihood.torch_log_prob(x, model.decode_levels(z1, z2))
        kl = model.prior.kl(z2, mean2, logvar2) + kl_normal_diag(mean1, logvar1, *lower.prior(z2))
        return losses.elbo_terms(log_px, kl, beta)
    samples, batch, _ = eps.shape
    z2 = losses.reparameterize(mean2, logvar2, eps[..., :upper])  # (S, B, D2)
    shared = features.expand(samples, *features.shape)  # (S, B, F)
    mean1, logvar1 = lower.posterior(shared, z2)  # the draw of z1 reads z2 itself
    z1 = losses.reparameterize(mean1, logvar1, eps[..., upper:])  # (S, B, D1)
    z2_read = z2.view_as(z2)  # what log w reads of z2 (module docstring)
    flat1, flat2 = z1.reshape(samples * batch, -1), z2_read.reshape(samples * batch, -1)
    repeated = x.expand(samples, *x.shape).reshape(samples * batch, *x.shape[1:])
    log_px = likelihood.torch_log_prob(repeated, model.decode_levels(flat1, flat2)).view(samples, batch)
    log_p2 = model.prior.log_prob(flat2).view(samples, batch)
    log_p1 = losses.log_normal_diag(z1, *lower.prior(z2_read))  # (S, B)
    log_q2 = losses.log_normal_diag(z2_read, mean2.detach(), logvar2.detach())
    log_q1 = losses.log_normal_diag(z1, *_stopped_posterior(lower, shared, z2_read))
    return losses.iwae_dreg_terms(log_px, log_p2 + log_p1, log_q2 + log_q1, (z1, z2_read))
