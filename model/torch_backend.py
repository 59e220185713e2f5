"""A `model.core.scoring.Backend` over a torch VAE: numpy in, numpy out, no gradients."""

from __future__ import annotations

import numpy as np
import torch

from model.core.priors import Mixture, Prior, StandardNormal
from model.vae import VAE


class TorchBackend:
    def __init__(self, model: VAE) -> None:
        self.model = model.eval()
        self.prior = numpy_prior(self.model)

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, logvar = self.model.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return mean.numpy(), logvar.numpy()

    @torch.no_grad()
    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(p.numpy() for p in self.model.decode(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))))


@torch.no_grad()
def numpy_prior(model: VAE) -> Prior:
    """The trained model's prior, fixed: a learned one is the mixture `model.prior.mixture()` gives (a
    VampPrior's is its encoder at the pseudo-inputs, computed once here), in numpy."""
    mixture = model.prior.mixture()
    if mixture is None:
        return StandardNormal(model.config.latent_dim)
    means, logvars, log_weights = (t.detach().cpu().numpy() for t in mixture)
    return Mixture(means, logvars, log_weights, name=model.config.prior)
