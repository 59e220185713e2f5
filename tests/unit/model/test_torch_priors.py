"""The torch priors: the mixture's density against torch.distributions, VampPrior's components are the
encoder's posteriors at its pseudo-inputs, and samples come from the mixture."""

import math

import pytest
import torch
from torch import distributions as D

from model import prior as priors
from model.config import ModelConfig
from model.vae import VAE

MODEL = ModelConfig(arch="conv", input_shape=(1, 8, 8), latent_dim=3, hidden=(16,), conv_channels=(4,))


def reference(mixture):
    means, logvars, log_weights = mixture
    return D.MixtureSameFamily(
        D.Categorical(logits=log_weights), D.Independent(D.Normal(means, torch.exp(0.5 * logvars)), 1)
    )


@pytest.mark.parametrize("name", ["mog", "vamp"])
def test_a_mixture_prior_has_the_density_of_its_mixture(name):
    torch.manual_seed(0)
    model = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": name, "prior_components": 5}))
    with torch.no_grad():
        if name == "mog":
            model.prior.means.normal_()
            model.prior.logvars.uniform_(-1.0, 0.5)
            model.prior.logits.normal_()
        z = torch.randn(64, 3) * 2
        mixture = model.prior.mixture()
        assert torch.allclose(model.prior.log_prob(z), reference(mixture).log_prob(z), atol=1e-5)
        assert torch.allclose(mixture[2].exp().sum(), torch.tensor(1.0))


def test_the_vampprior_components_are_the_posteriors_at_its_pseudo_inputs():
    torch.manual_seed(0)
    model = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": "vamp", "prior_components": 4})).eval()
    images = torch.rand(4, 1, 8, 8)
    model.prior.initialize(images, model.encoder)
    means, logvars, log_weights = model.prior.mixture()
    with torch.no_grad():
        expected = model.encode(images)
    assert torch.equal(means, expected[0]) and torch.equal(logvars, expected[1])
    assert torch.allclose(log_weights, torch.full((4,), -math.log(4)))
    assert not any(name.startswith("prior.encoder") for name in model.state_dict())  # the encoder is the VAE's


def test_the_standard_normal_prior_has_no_parameters_so_old_checkpoints_load():
    model = VAE(MODEL)
    assert not [n for n in model.state_dict() if n.startswith("prior.")]
    z = torch.randn(5, 3)
    assert torch.allclose(model.prior.log_prob(z), D.Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_samples_come_from_the_mixture():
    torch.manual_seed(0)
    model = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": "mog", "prior_components": 2}))
    with torch.no_grad():
        model.prior.means.copy_(torch.tensor([[-5.0, 0, 0], [5.0, 0, 0]]))
        model.prior.logvars.fill_(math.log(0.01))
        model.prior.logits.copy_(torch.tensor([math.log(0.25), math.log(0.75)]))
    z = priors.sample(model.prior, 20000, torch.Generator().manual_seed(1))
    right = (z[:, 0] > 0).float().mean().item()
    assert abs(right - 0.75) < 0.02  # 6 standard errors
    assert torch.allclose(z[z[:, 0] > 0, 0].mean(), torch.tensor(5.0), atol=0.01)
    assert torch.equal(z, priors.sample(model.prior, 20000, torch.Generator().manual_seed(1)))
