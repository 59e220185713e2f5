"""The IWAE bound with DReG gradients: the bound's value, the encoder gradient of Tucker et al. (2019)
computed by hand, and the decoder's gradient of the plain IWAE bound."""

import math

import torch

from model import losses


def setup(seed=0, samples=6, batch=3, dims=2):
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, dims, generator=generator).requires_grad_()
    logvar = (0.3 * torch.randn(batch, dims, generator=generator)).requires_grad_()
    theta = torch.randn(dims, generator=generator).requires_grad_()  # a "decoder" parameter
    eps = torch.randn(samples, batch, dims, generator=generator)
    return mean, logvar, theta, eps


def log_terms(z, mean, logvar, theta):
    log_px_z = -0.5 * ((z - theta) ** 2).sum(-1) * 3.0  # a sharp likelihood around theta
    log_pz = -0.5 * (z**2).sum(-1) - z.shape[-1] * 0.5 * math.log(2 * math.pi)
    log_qz = losses.log_normal_diag(z, mean.detach(), logvar.detach())
    return log_px_z, log_pz, log_qz


def test_the_bound_is_the_log_mean_of_the_weights():
    mean, logvar, theta, eps = setup()
    z = losses.reparameterize(mean, logvar, eps)
    log_px_z, log_pz, log_qz = log_terms(z, mean, logvar, theta)
    terms = losses.iwae_dreg_terms(log_px_z, log_pz, log_qz, z)
    log_w = log_px_z + log_pz - log_qz
    assert torch.allclose(terms["objective"], torch.log(log_w.exp().mean(0)), atol=1e-5)
    assert torch.allclose(terms["elbo"], log_w.mean(0))
    assert (terms["iwae"] >= terms["elbo"]).all()


def test_the_encoder_gradient_is_dregs_and_the_decoders_is_the_bounds():
    mean, logvar, theta, eps = setup()
    z = losses.reparameterize(mean, logvar, eps)
    log_px_z, log_pz, log_qz = log_terms(z, mean, logvar, theta)
    losses.iwae_dreg_terms(log_px_z, log_pz, log_qz, z)["objective"].sum().backward()

    # By hand: sum_s w~_s^2 d log w_s / dz_s dz_s / dphi, with q's parameters stopped inside log q.
    z2 = losses.reparameterize(mean.detach(), logvar.detach(), eps).requires_grad_()
    log_w = sum(log_terms(z2, mean, logvar, theta.detach())[:2]) - log_terms(z2, mean, logvar, theta)[2]
    (grad_z,) = torch.autograd.grad(log_w.sum(), z2)
    w2 = torch.softmax(log_w.detach(), dim=0).pow(2).unsqueeze(-1)
    sigma = torch.exp(0.5 * logvar.detach())
    assert torch.allclose(mean.grad, (w2 * grad_z).sum(0), atol=1e-5)
    assert torch.allclose(logvar.grad, (w2 * grad_z * 0.5 * sigma * eps).sum(0), atol=1e-5)

    # The decoder sees the plain IWAE bound's gradient.
    theta_plain = theta.detach().clone().requires_grad_()
    z3 = z2.detach()
    plain = torch.logsumexp(
        sum(log_terms(z3, mean, logvar, theta_plain)[:2]) - log_terms(z3, mean, logvar, theta_plain)[2], 0
    )
    plain.sum().backward()
    assert torch.allclose(theta.grad, theta_plain.grad, atol=1e-5)


def test_one_sample_kl_estimate_averages_to_the_analytic_kl():
    generator = torch.Generator().manual_seed(0)
    mean, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[-0.5, 0.3]])
    eps = torch.randn(200000, 2, generator=generator)
    z = losses.reparameterize(mean, logvar, eps)
    log_prior = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
    estimate = losses.kl_estimate(z, mean, logvar, log_prior)
    assert abs(estimate.mean().item() - losses.kl_standard_normal(mean, logvar).item()) < 0.01
