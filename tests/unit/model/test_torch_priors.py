"""The torch (training) priors: the mixture's density against torch.distributions, VampPrior's components are
the encoder's posteriors at its pseudo-inputs, samples come from the mixture, each prior's KL is the closed
form or the one-sample estimate as its kind says, and each one's fixed numpy form is what scoring uses."""

import math

import pytest
import torch
from torch import distributions as D

from model import losses, torch_priors
from model.config import ModelConfig
from model.core import priors as core_priors
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
    z = model.prior.sample(20000, torch.Generator().manual_seed(1))
    right = (z[:, 0] > 0).float().mean().item()
    assert abs(right - 0.75) < 0.02  # 6 standard errors
    assert torch.allclose(z[z[:, 0] > 0, 0].mean(), torch.tensor(5.0), atol=0.01)
    assert torch.equal(z, model.prior.sample(20000, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", ["standard_normal", "mog", "vamp"])
def test_every_kind_of_prior_builds_its_own_module(name):
    components = core_priors.prior_kind(name).default_components
    model = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": name, "prior_components": components}))
    assert model.prior.kind is core_priors.PRIOR_KINDS[name] and model.prior.name == name
    assert isinstance(model.prior, torch_priors.TorchPrior)
    assert set(torch_priors.BUILDERS) == set(core_priors.PRIOR_KINDS)  # no kind without a module


def test_the_standard_normal_kl_is_the_closed_form_and_a_mixtures_is_the_one_sample_estimate():
    torch.manual_seed(0)
    mean, logvar = torch.randn(6, 3), torch.randn(6, 3) * 0.3
    z = mean + torch.exp(0.5 * logvar) * torch.randn(6, 3)
    normal = VAE(MODEL).prior
    assert normal.kind.closed_form_kl
    assert torch.equal(normal.kl(z, mean, logvar), losses.kl_standard_normal(mean, logvar))
    mog = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": "mog", "prior_components": 4})).prior
    assert not mog.kind.closed_form_kl
    expected = losses.log_normal_diag(z, mean, logvar) - mog.log_prob(z)
    assert torch.equal(mog.kl(z, mean, logvar), expected)


def test_the_standard_normal_samples_are_the_noise_itself():
    prior = VAE(MODEL).prior
    z = prior.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(z, torch.randn((5, 3), generator=torch.Generator().manual_seed(3)))


def test_the_fixed_prior_is_the_numpy_twin_of_the_trained_one():
    assert isinstance(VAE(MODEL).prior.fixed(), core_priors.StandardNormal)
    torch.manual_seed(0)
    model = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": "mog", "prior_components": 4})).eval()
    fixed = model.prior.fixed()
    assert isinstance(fixed, core_priors.Mixture) and fixed.name == "mog" and fixed.components == 4
    z = torch.randn(8, 3)
    with torch.no_grad():
        expected = model.prior.log_prob(z).double().numpy()
    assert fixed.log_prob(z.numpy()) == pytest.approx(expected, abs=1e-4)


def test_a_learned_prior_is_its_mixture_and_the_standard_normal_has_none():
    mog = VAE(ModelConfig(**{**MODEL.to_dict(), "prior": "mog", "prior_components": 4})).prior
    assert torch_priors.as_mixture(mog) is mog
    with pytest.raises(TypeError, match="standard_normal prior is not a mixture"):
        torch_priors.as_mixture(VAE(MODEL).prior)
