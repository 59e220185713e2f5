"""vae-eval's torch backend carries the model's prior, in numpy, so its ELBO and IWAE are the trained model's."""

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.core import distributions as dist
from model.core import scoring
from model.core.likelihoods import LIKELIHOODS
from model.core.preprocess import image_stream
from model.core.priors import Mixture, StandardNormal
from model.torch_backend import TorchBackend
from model.vae import VAE

SMALL = dict(arch="mlp", decoder="mlp", input_shape=(1, 4, 4), hidden=(16,), latent_dim=3)


def small_vae(prior: str, components: int) -> VAE:
    torch.manual_seed(0)
    model = VAE(ModelConfig(**SMALL, prior=prior, prior_components=components))
    if prior == "mog":
        with torch.no_grad():  # away from the initial N(0, I)-like spread, and unequal weights
            model.prior.logits.copy_(torch.tensor([1.0, -0.5, 0.2]))
            model.prior.logvars.add_(-0.7)
    return model


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_a_learned_prior_becomes_the_same_mixture_in_numpy(prior):
    model = small_vae(prior, 3)
    backend = TorchBackend(model)
    assert isinstance(backend.prior, Mixture) and backend.prior.name == prior and backend.prior.components == 3
    z = torch.randn(50, 3, dtype=torch.float32) * 2
    with torch.no_grad():
        expected = model.prior.log_prob(z).double().numpy()
    np.testing.assert_allclose(backend.prior.log_prob(z.numpy()), expected, rtol=0, atol=1e-4)


def test_the_standard_normal_model_keeps_the_standard_normal():
    prior = TorchBackend(small_vae("standard_normal", 0)).prior
    assert isinstance(prior, StandardNormal) and prior.latent_dim == 3


def test_scoring_through_the_backend_uses_the_models_prior():
    model = small_vae("mog", 3)
    backend = TorchBackend(model)
    bernoulli = LIKELIHOODS["bernoulli"]
    x = (np.random.default_rng(0).random((2, 1, 4, 4)) > 0.5).astype(np.float32)
    scores = scoring.score(backend, bernoulli, x, seed=1)
    mean, logvar = backend.encode(x)
    z = dist.reparameterize(
        mean, logvar, np.stack([image_stream(1, image).standard_normal(3, dtype=np.float32) for image in x])
    )
    with torch.no_grad():
        log_p = model.prior.log_prob(torch.from_numpy(z)).double().numpy()
    np.testing.assert_allclose(scores.kl, dist.log_normal_diag(z, mean, logvar) - log_p, rtol=0, atol=1e-4)
