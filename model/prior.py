"""The prior p(z) in torch: N(0, I), a learned mixture of Gaussians, or a VampPrior.

Both learned priors are mixtures of diagonal Gaussians over the latent space:
- `mog`: K free components (means, log-variances and mixture logits are parameters);
- `vamp` (Tomczak & Welling 2018): the encoder's posteriors at K learned pseudo-inputs, equally weighted.
Once trained, either is a fixed mixture: `mixture()` gives its parameters, which `export/` writes into
prior.onnx and the service samples from (`model/core/priors.py` is the torch-free twin).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from model.config import ModelConfig
from model.losses import LOG_2PI, log_normal_diag

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # means (K, D), logvars (K, D), log_weights (K,)


def mixture_log_prob(z: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """log sum_k w_k N(z | mu_k, diag(exp(logvar_k))).  z (B, D) -> (B,)"""
    means, logvars, log_weights = mixture
    per_component = log_normal_diag(z.unsqueeze(1), means.unsqueeze(0), logvars.unsqueeze(0))  # (B, K)
    return torch.logsumexp(per_component + log_weights, dim=1)


class StandardNormal(nn.Module):
    name = "standard_normal"

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(dim=-1)

    def mixture(self) -> Mixture | None:
        return None


class MixtureOfGaussians(nn.Module):
    name = "mog"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        k, d = config.prior_components, config.latent_dim
        self.logvar_min, self.logvar_max = config.logvar_min, config.logvar_max
        # Spread like N(0, I) until `initialize` puts the components where the data's posteriors are.
        self.means = nn.Parameter(torch.randn(k, d))
        self.logvars = nn.Parameter(torch.zeros(k, d))
        self.logits = nn.Parameter(torch.zeros(k))

    @torch.no_grad()
    def initialize(
        self, images: torch.Tensor, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """One component per image, at the encoder's posterior q(z|x) of K training images, widened by a
        variance of 0.1 so that the mixture also covers the space between them (posteriors are narrow:
        at their own widths a mixture of 500 scores held-out latents about 5 nats below N(0, I))."""
        means, logvars = encode(images)
        self.means.copy_(means)
        self.logvars.copy_(torch.log(logvars.exp() + 0.1))
        self.logits.zero_()

    def mixture(self) -> Mixture:
        return self.means, self.logvars.clamp(self.logvar_min, self.logvar_max), torch.log_softmax(self.logits, dim=0)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, self.mixture())


class VampPrior(nn.Module):
    name = "vamp"

    def __init__(
        self, config: ModelConfig, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        super().__init__()
        self.pseudo_inputs = nn.Parameter(torch.full((config.prior_components, *config.input_shape), 0.5))
        # Not a submodule: the encoder belongs to the VAE; the prior only calls it.
        self._encode = encode

    @torch.no_grad()
    def initialize(
        self, images: torch.Tensor, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Pseudo-inputs start as K training images (the "VampPrior data" initialisation)."""
        self.pseudo_inputs.copy_(images)

    def mixture(self) -> Mixture:
        # Pixels stay in [0, 1], the encoder's input range (the paper's hardtanh).
        means, logvars = self._encode(self.pseudo_inputs.clamp(0.0, 1.0))
        k = means.shape[0]
        return means, logvars, torch.full((k,), -math.log(k), dtype=means.dtype, device=means.device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, self.mixture())


def build(config: ModelConfig, encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    if config.prior == "mog":
        return MixtureOfGaussians(config)
    if config.prior == "vamp":
        return VampPrior(config, encode)
    return StandardNormal()


@torch.no_grad()
def sample(prior: nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws from the prior: a component per draw, then its Gaussian.  -> (n, D)"""
    mixture = prior.mixture()
    if mixture is None:
        raise ValueError("sample the standard normal prior with torch.randn")
    means, logvars, log_weights = mixture
    component = torch.multinomial(log_weights.exp(), n, replacement=True, generator=generator)
    eps = torch.randn((n, means.shape[1]), generator=generator)
    return means[component] + torch.exp(0.5 * logvars[component]) * eps
