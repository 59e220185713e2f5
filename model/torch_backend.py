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


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class TwoLevelTorchBackend:
    """A `model.core.hierarchy.TwoLevelBackend` over a two-level torch VAE (model/vae.py)."""

    def __init__(self, model: VAE) -> None:
        if model.lower is None:
            raise ValueError("a one-level VAE: use TorchBackend")
        self.model, self.lower = model.eval(), model.lower
        self.prior = numpy_prior(self.model)
        self.lower_latent_dim = model.config.lower_latent_dim

    @torch.no_grad()
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features = self.model.encoder.body(_tensor(x))
        mean, logvar = self.model.encoder.posterior(features)
        return mean.numpy(), logvar.numpy(), features.numpy()

    @torch.no_grad()
    def encode_lower(self, features: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, logvar = self.lower.posterior(_tensor(features), _tensor(z2))
        return mean.numpy(), logvar.numpy()

    @torch.no_grad()
    def lower_prior(self, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, logvar = self.lower.prior(_tensor(z2))
        return mean.numpy(), logvar.numpy()

    @torch.no_grad()
    def decode(self, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(p.numpy() for p in self.model.decode_levels(_tensor(z1), _tensor(z2)))
