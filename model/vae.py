"""The VAE: encoder q(z|x) -> (mean, logvar), decoder p(x|z) -> distribution parameters.

The decoder's parameters, and their names (`Likelihood.outputs`), are its likelihood's
(model/core/likelihoods.py); a learned log-scale, where the likelihood has one, lives here.

Every part is deterministic so it exports to ONNX as it is; noise is drawn by the caller.

With `lower_latent_dim` > 0 the VAE has two stochastic levels, z2 -> z1 -> x, as Tomczak & Welling's
HVAE (docs/design/hierarchy.md): z2 is `latent_dim`-dimensional with the model's prior; `Lower` holds
q(z1 | x, z2), from the encoder's features and z2, and p(z1 | z2); the decoder reads [z1, z2]. `encode`
then gives q(z2 | x), and `decode(z2)` goes through both levels with z1 the mean of p(z1 | z2), so
sampling from the prior and decoding work as for one level; the losses use the levels themselves
(model/hierarchy_loss.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from model import torch_priors
from model.config import ModelConfig
from model.core import likelihoods


def _dense(widths: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=False):
        layers += [nn.Linear(fan_in, fan_out), nn.ELU()]
    return layers


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels, height, width = config.input_shape
        layers: list[nn.Module] = []
        if config.arch == "conv":
            for out_channels in config.conv_channels:  # each halves H and W
                layers += [nn.Conv2d(channels, out_channels, kernel_size=4, stride=2, padding=1), nn.ELU()]
                channels, height, width = out_channels, height // 2, width // 2
        layers.append(nn.Flatten())
        layers += _dense([channels * height * width, *config.hidden])
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(config.hidden[-1], 2 * config.latent_dim)
        self.logvar_min, self.logvar_max = config.logvar_min, config.logvar_max

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior(self.body(x))

    def posterior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's features (B, hidden[-1]) -> q(z|x)'s mean (B, D) and logvar (B, D)."""
        mean, logvar = self.head(features).chunk(2, dim=-1)
        # Clamped so exp(logvar) can neither overflow nor collapse to zero.
        return mean, logvar.clamp(self.logvar_min, self.logvar_max)


class Lower(nn.Module):
    """The lower level of a two-level VAE: q(z1 | x, z2) from the encoder's features and z2, and the
    conditional prior p(z1 | z2); each a dense layer of the encoder's last width, then mean and logvar."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        upper, lower, width = config.latent_dim, config.lower_latent_dim, config.hidden[-1]
        self.posterior_net = nn.Sequential(*_dense([width + upper, width]), nn.Linear(width, 2 * lower))
        self.prior_net = nn.Sequential(*_dense([upper, width]), nn.Linear(width, 2 * lower))
        self.logvar_min, self.logvar_max = config.logvar_min, config.logvar_max

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar.clamp(self.logvar_min, self.logvar_max)

    def posterior(self, features: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z1 | x, z2): features (..., F), z2 (..., D2) -> mean, logvar (..., D1)"""
        return self._split(self.posterior_net(torch.cat([features, z2], dim=-1)))

    def prior(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z1 | z2): z2 (..., D2) -> mean, logvar (..., D1)"""
        return self._split(self.prior_net(z2))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        channels, height, width = config.input_shape
        self.likelihood = likelihoods.get(config.likelihood)
        # A scale per pixel and per z: the last layer outputs a second set of channels, the raw log-scale.
        self.scale_from_decoder = self.likelihood.learned_scale and config.gaussian_scale == "decoder"
        self.image_channels = channels
        channels = 2 * channels if self.scale_from_decoder else channels
        widths = [config.latent_dim, *reversed(config.hidden)]
        if config.decoder == "conv":
            chans = list(config.decoder_up_channels)  # lowest resolution first
            depth = len(chans)
            self.start_shape = (chans[0], height >> depth, width >> depth)
            ups: list[nn.Module] = []
            for in_c, out_c in zip(chans, [*chans[1:], channels], strict=False):
                ups += [nn.ConvTranspose2d(in_c, out_c, kernel_size=4, stride=2, padding=1), nn.ELU()]
            self.body = nn.Sequential(
                *_dense(widths),
                nn.Linear(widths[-1], math.prod(self.start_shape)),
                nn.ELU(),
                nn.Unflatten(1, self.start_shape),
                *ups[:-1],
            )  # no activation on the output
        else:
            self.body = nn.Sequential(
                *_dense(widths),
                nn.Linear(widths[-1], channels * height * width),
                nn.Unflatten(1, (channels, height, width)),
            )
        if self.likelihood.learned_scale and not self.scale_from_decoder:
            scale_shape = (1, 1, 1, 1) if config.gaussian_scale == "shared" else (1, *config.input_shape)
            self.log_sigma = nn.Parameter(torch.full(scale_shape, math.log(0.1)))
        else:
            self.register_parameter("log_sigma", None)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.body(z)  # (B, C, H, W), or (B, 2C, H, W) when the decoder outputs the scale
        if self.scale_from_decoder:
            mean, log_scale = out.split(self.image_channels, dim=1)
            return self.likelihood.torch_params(mean, log_scale)
        return self.likelihood.torch_params(out, self.log_sigma)  # named by self.likelihood.outputs


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        # Two levels: the decoder reads [z1, z2]; it is the one-level decoder of that many inputs.
        self.decoder = Decoder(dataclasses.replace(config, latent_dim=config.noise_dim, lower_latent_dim=0))
        self.lower = Lower(config) if config.levels == 2 else None
        self.prior = torch_priors.build(config, self.encoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x), the top level's with two levels."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """p(x|z); with two levels z is z2, and z1 the mean of p(z1 | z2)."""
        if self.lower is None:
            return self.decoder(z)
        mean1, _ = self.lower.prior(z)
        return self.decoder(torch.cat([mean1, z], dim=-1))

    def decode_levels(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """p(x | z1, z2) of a two-level VAE."""
        return self.decoder(torch.cat([z1, z2], dim=-1))
