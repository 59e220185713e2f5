"""The VAE: encoder q(z|x) -> (mean, logvar), decoder p(x|z) -> distribution parameters.

The decoder's parameters, and their names (`Likelihood.outputs`), are its likelihood's
(model/core/likelihoods.py); a learned log-scale, where the likelihood has one, lives here.

Both halves are deterministic so they export to ONNX as they are; noise is drawn by the caller.
"""

from __future__ import annotations

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
        mean, logvar = self.head(self.body(x)).chunk(2, dim=-1)  # (B, D), (B, D)
        # Clamped so exp(logvar) can neither overflow nor collapse to zero.
        return mean, logvar.clamp(self.logvar_min, self.logvar_max)


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
        self.decoder = Decoder(config)
        self.prior = torch_priors.build(config, self.encoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.decoder(z)
