"""A `model.core.scoring.Backend` over a torch VAE: numpy in, numpy out, no gradients."""

from __future__ import annotations

import numpy as np
import torch

from model.core.priors import Prior
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


def numpy_prior(model: VAE) -> Prior:
    """The trained model's prior, fixed, in numpy (`TorchPrior.fixed`)."""
    return model.prior.fixed()
