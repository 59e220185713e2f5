import pytest
import torch

from model.config import ModelConfig
from model.core.likelihoods import LIKELIHOODS
from model.vae import VAE


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("decoder", ["conv", "mlp"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_shapes_follow_the_config(arch, decoder, likelihood):
    config = ModelConfig(
        arch=arch,
        decoder=decoder,
        likelihood=likelihood,
        input_shape=(3, 16, 12),
        latent_dim=5,
        hidden=(32,),
        conv_channels=(4, 8),
    )
    model = VAE(config)
    mean, logvar = model.encode(torch.rand(7, 3, 16, 12))
    assert mean.shape == logvar.shape == (7, 5)
    params = model.decode(torch.randn(7, 5))
    assert len(params) == len(LIKELIHOODS[likelihood].outputs)
    assert all(p.shape == (7, 3, 16, 12) for p in params)


def test_logvar_is_clamped():
    config = ModelConfig(arch="mlp", input_shape=(1, 4, 4), hidden=(8,), latent_dim=2, logvar_min=-1.0, logvar_max=1.0)
    model = VAE(config)
    with torch.no_grad():
        model.encoder.head.bias.fill_(100.0)
    _, logvar = model.encode(torch.zeros(1, 1, 4, 4))
    assert logvar.max().item() == 1.0


def test_per_pixel_gaussian_scale_has_one_value_per_pixel():
    config = ModelConfig(
        arch="mlp", likelihood="gaussian", gaussian_scale="per_pixel", input_shape=(1, 4, 4), hidden=(8,), latent_dim=2
    )
    assert VAE(config).decoder.log_sigma.shape == (1, 1, 4, 4)
