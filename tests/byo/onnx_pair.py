"""A VAE whose author ships ONNX graphs: exported here with a plain torch.onnx.export call and names of its own
(`pixels` -> `mu`, `log_sigma`; `latent` -> `recon_logits`), inputs normalised as (pixel - 0.5) / 0.25, and the
posterior given as a log standard deviation."""

from pathlib import Path

import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, latent_dim: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(256, 128), nn.SiLU())
        self.mu = nn.Linear(128, latent_dim)
        self.log_sigma = nn.Linear(128, latent_dim)

    def forward(self, pixels):
        h = self.body(pixels)
        return self.mu(h), self.log_sigma(h)


class Decoder(nn.Module):
    def __init__(self, latent_dim: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(latent_dim, 128), nn.SiLU(), nn.Linear(128, 256), nn.Unflatten(1, (1, 16, 16))
        )

    def forward(self, latent):
        return self.body(latent)


def export(directory: Path) -> tuple[Path, Path]:
    torch.manual_seed(2)
    encoder, decoder = Encoder().eval(), Decoder().eval()
    encoder_path, decoder_path = directory / "my_encoder.onnx", directory / "my_decoder.onnx"
    torch.onnx.export(
        encoder,
        (torch.rand(2, 1, 16, 16),),
        encoder_path,
        input_names=["pixels"],
        output_names=["mu", "log_sigma"],
        dynamic_axes={"pixels": {0: "n"}, "mu": {0: "n"}, "log_sigma": {0: "n"}},
    )
    torch.onnx.export(
        decoder,
        (torch.randn(2, 8),),
        decoder_path,
        input_names=["latent"],
        output_names=["recon_logits"],
        dynamic_axes={"latent": {0: "n"}, "recon_logits": {0: "n"}},
    )
    return encoder_path, decoder_path
