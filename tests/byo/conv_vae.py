"""A convolutional VAE as many people write one: RGB 32x32 inputs in [-1, 1], batch norm, a tanh output read as
the mean of a Gaussian with one learned sigma (`log_sigma`), and methods of its own names: `embed` and `generate`."""

import torch
from torch import nn


class ConvVAE(nn.Module):
    def __init__(self, latent_dim: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.posterior = nn.Linear(64 * 8 * 8, 2 * latent_dim)
        self.expand = nn.Linear(latent_dim, 64 * 8 * 8)
        self.pixels = nn.Sequential(
            nn.ReLU(),
            nn.Unflatten(1, (64, 8, 8)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, stride=2, padding=1),
            nn.Tanh(),
        )
        self.log_sigma = nn.Parameter(torch.tensor(-2.5))

    def embed(self, x):
        mu, logvar = self.posterior(self.features(x)).chunk(2, dim=1)
        return mu, logvar

    def generate(self, z):
        return self.pixels(self.expand(z))


def build():
    """The model with its batch norms' running statistics, and a posterior as narrow, as training would leave them."""
    torch.manual_seed(1)
    model = ConvVAE()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.1, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
        latent_dim = model.posterior.out_features // 2
        model.posterior.weight[latent_dim:] *= 0.1
        model.posterior.bias[latent_dim:] = -6.0  # log-variance: sigma about 0.05
    return model
