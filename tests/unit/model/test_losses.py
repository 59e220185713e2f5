"""The training objective's pure functions against closed forms (the reparameterisation, the Gaussian's
log-density and KL against torch.distributions, the ELBO's terms), and the IWAE bound with DReG gradients:
the bound's value, the encoder gradient of Tucker et al. (2019) computed by hand, and the decoder's gradient
of the plain IWAE bound."""

import math

import torch
from torch import distributions as D

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


def test_reparameterize_is_the_mean_plus_sigma_times_the_noise():
    mean, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[math.log(4.0), 0.0]])  # sigma = 2 and 1
    eps = torch.tensor([[0.5, -3.0]])
    assert torch.allclose(losses.reparameterize(mean, logvar, eps), torch.tensor([[2.0, -5.0]]))


def test_log_normal_diag_and_the_kl_are_the_diagonal_gaussians_of_torch_distributions():
    generator = torch.Generator().manual_seed(1)
    mean, logvar, z = (torch.randn(4, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    q = D.Normal(mean, torch.exp(0.5 * logvar))
    assert torch.allclose(losses.log_normal_diag(z, mean, logvar), q.log_prob(z).sum(-1))
    expected_kl = D.kl_divergence(q, D.Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(-1)
    assert torch.allclose(losses.kl_standard_normal(mean, logvar), expected_kl)
    zero = torch.zeros(2, 3)
    assert torch.equal(losses.kl_standard_normal(zero, zero), torch.zeros(2))  # q = p: no divergence
    assert torch.allclose(losses.log_normal_diag(zero, zero, zero), torch.full((2,), -1.5 * math.log(2 * math.pi)))


def test_the_kl_estimate_is_log_q_minus_log_p():
    z, mean, logvar = torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[0.0]])
    log_q = -0.5 * 0.25 - 0.5 * math.log(2 * math.pi)
    assert torch.allclose(losses.kl_estimate(z, mean, logvar, torch.tensor([-3.0])), torch.tensor([log_q + 3.0]))


def test_the_elbo_terms_and_the_beta_weighted_objective():
    log_px_z, kl = torch.tensor([-100.0, -50.0]), torch.tensor([10.0, 4.0])
    terms = losses.elbo_terms(log_px_z, kl, beta=0.5)
    assert torch.equal(terms["elbo"], torch.tensor([-110.0, -54.0]))
    assert torch.equal(terms["objective"], torch.tensor([-105.0, -52.0]))
    assert torch.equal(terms["reconstruction"], log_px_z) and torch.equal(terms["kl"], kl)
    assert torch.equal(losses.elbo_terms(log_px_z, kl)["objective"], terms["elbo"])  # beta = 1: the ELBO
