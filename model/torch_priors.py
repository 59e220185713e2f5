"""The prior p(z) on the torch (training) side: N(0, I), a learned mixture of Gaussians, or a VampPrior.

One module per kind of prior (`model.core.priors.PriorKind`), each answering the same questions: its
log-density, its term in the ELBO (the closed-form KL, or the one-sample estimate), sampling, how it starts
from training images, and its trained form in numpy (`fixed`), which is what `export/` writes into
prior.onnx and the service samples from (`model/core/priors.py`). Both learned priors are mixtures of
diagonal Gaussians over the latent space:
- `mog`: K free components (means, log-variances and mixture logits are parameters);
- `vamp` (Tomczak & Welling 2018): the encoder's posteriors at K learned pseudo-inputs, equally weighted.
Adding a prior is a `PriorKind` in `model/core/priors.py`, a subclass here, and their tests.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from model import losses
from model.config import ModelConfig
from model.core import priors as core_priors
from model.losses import LOG_2PI, log_normal_diag

Mixture = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # means (K, D), logvars (K, D), log_weights (K,)
Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mixture_log_prob(z: torch.Tensor, mixture: Mixture) -> torch.Tensor:
    """log sum_k w_k N(z | mu_k, diag(exp(logvar_k))).  z (B, D) -> (B,)"""
    means, logvars, log_weights = mixture
    per_component = log_normal_diag(z.unsqueeze(1), means.unsqueeze(0), logvars.unsqueeze(0))  # (B, K)
    return torch.logsumexp(per_component + log_weights, dim=1)


class TorchPrior(nn.Module, ABC):
    """p(z) in torch, for one `PriorKind`."""

    kind: ClassVar[core_priors.PriorKind]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim

    @property
    def name(self) -> str:
        return self.kind.name

    @abstractmethod
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z).  (B, D) -> (B,)"""

    def kl(self, z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The ELBO's KL(q(z|x) || p(z)) for q = N(mean, diag(exp(logvar))) and z (B, D) the ELBO's own sample
        of q: without a closed form, the one-sample estimate log q(z|x) - log p(z).  -> (B,)"""
        return losses.kl_estimate(z, mean, logvar, self.log_prob(z))

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws from the prior.  -> (n, D)"""

    def initialize(self, images: torch.Tensor, encode: Encode) -> None:
        """Place a learned prior at K training images before training; nothing to place for a fixed one."""

    @abstractmethod
    def fixed(self) -> core_priors.Prior:
        """The trained prior, fixed, in numpy: what scoring uses and, for a learned one, what prior.onnx holds."""


class StandardNormal(TorchPrior):
    kind = core_priors.STANDARD_NORMAL

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(dim=-1)

    def kl(self, z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return losses.kl_standard_normal(mean, logvar)  # closed form: z is not needed

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn((n, self.latent_dim), generator=generator)

    def fixed(self) -> core_priors.Prior:
        return core_priors.StandardNormal(self.latent_dim)


class MixturePrior(TorchPrior):
    """A prior that is, once trained, a mixture of diagonal Gaussians (`mixture()`)."""

    @abstractmethod
    def mixture(self) -> Mixture:
        """Its means (K, D), log-variances (K, D) and log-weights (K,)."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return mixture_log_prob(z, self.mixture())

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """A component per draw, then its Gaussian.  -> (n, D)"""
        means, logvars, log_weights = self.mixture()
        component = torch.multinomial(log_weights.exp(), n, replacement=True, generator=generator)
        eps = torch.randn((n, means.shape[1]), generator=generator)
        return means[component] + torch.exp(0.5 * logvars[component]) * eps

    @torch.no_grad()
    def fixed(self) -> core_priors.Prior:
        """A VampPrior's mixture is its encoder at the pseudo-inputs, computed once here."""
        means, logvars, log_weights = (t.detach().cpu().numpy() for t in self.mixture())
        return core_priors.Mixture(means, logvars, log_weights, name=self.name)


class MixtureOfGaussians(MixturePrior):
    kind = core_priors.MOG

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        k, d = config.prior_components, config.latent_dim
        self.logvar_min, self.logvar_max = config.logvar_min, config.logvar_max
        # Spread like N(0, I) until `initialize` puts the components where the data's posteriors are.
        self.means = nn.Parameter(torch.randn(k, d))
        self.logvars = nn.Parameter(torch.zeros(k, d))
        self.logits = nn.Parameter(torch.zeros(k))

    @torch.no_grad()
    def initialize(self, images: torch.Tensor, encode: Encode) -> None:
        """One component per image, at the encoder's posterior q(z|x) of K training images, widened by a
        variance of 0.1 so that the mixture also covers the space between them (posteriors are narrow: at
        their own widths the mixture scores held-out latents below N(0, I); docs/design/decoder-cost.md)."""
        means, logvars = encode(images)
        self.means.copy_(means)
        self.logvars.copy_(torch.log(logvars.exp() + 0.1))
        self.logits.zero_()

    def mixture(self) -> Mixture:
        return self.means, self.logvars.clamp(self.logvar_min, self.logvar_max), torch.log_softmax(self.logits, dim=0)


class VampPrior(MixturePrior):
    kind = core_priors.VAMP

    def __init__(self, config: ModelConfig, encode: Encode) -> None:
        super().__init__(config)
        self.pseudo_inputs = nn.Parameter(torch.full((config.prior_components, *config.input_shape), 0.5))
        # Not a submodule: the encoder belongs to the VAE; the prior only calls it.
        self._encode = encode

    @torch.no_grad()
    def initialize(self, images: torch.Tensor, encode: Encode) -> None:
        """Pseudo-inputs start as K training images (the "VampPrior data" initialisation)."""
        self.pseudo_inputs.copy_(images)

    def mixture(self) -> Mixture:
        # Pixels stay in [0, 1], the encoder's input range (the paper's hardtanh).
        means, logvars = self._encode(self.pseudo_inputs.clamp(0.0, 1.0))
        k = means.shape[0]
        return means, logvars, torch.full((k,), -math.log(k), dtype=means.dtype, device=means.device)


BUILDERS: dict[str, Callable[[ModelConfig, Encode], TorchPrior]] = {
    StandardNormal.kind.name: lambda config, encode: StandardNormal(config),
    MixtureOfGaussians.kind.name: lambda config, encode: MixtureOfGaussians(config),
    VampPrior.kind.name: VampPrior,
}


def build(config: ModelConfig, encode: Encode) -> TorchPrior:
    """The prior module of `config.prior` (the VampPrior calls `encode`, the VAE's encoder)."""
    return BUILDERS[config.prior_kind.name](config, encode)


def as_mixture(prior: TorchPrior) -> MixturePrior:
    """A learned prior, as the mixture it is (what `export/` writes into prior.onnx); TypeError for N(0, I),
    which has none."""
    if not isinstance(prior, MixturePrior):
        raise TypeError(f"the {prior.name} prior is not a mixture: it has no prior graph")
    return prior
