"""vae-import torch takes the forms users' VAEs come in, beyond (mean, logvar) tuples from `encode`: methods that
return torch.distributions (a Normal posterior, a Bernoulli likelihood, wrapped in Independent), submodules named
as the methods, and weights saved from a wrapper whose keys carry a prefix (`model.`, DataParallel's `module.`).
What is served equals the user's module."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from export.import_cli import main
from model.core.artifact import load_model_dir

USER_FILE = """
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal


class DistVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 16), nn.Unflatten(1, (1, 4, 4)))

    def posterior(self, x):
        mu, raw = self.encoder(x).chunk(2, dim=1)
        return Independent(Normal(mu, nn.functional.softplus(raw) + 1e-3), 1)

    def likelihood(self, z):
        return Independent(Bernoulli(logits=self.net(z)), 3)


class Halves(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Split()
        self.decoder = nn.Sequential(nn.Linear(2, 16), nn.Unflatten(1, (1, 4, 4)))


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 4)

    def forward(self, x):
        return tuple(self.linear(x.flatten(1)).chunk(2, dim=1))


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = DistVAE()
"""
SHAPE = ("--input-shape", "1", "4", "4")


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_vaes.py"
    path.write_text(textwrap.dedent(USER_FILE))
    return path


def load_user(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_vaes_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def test_distributions_returned_by_the_methods_are_read_as_their_parameters(user_file, tmp_path, capsys):
    torch.manual_seed(0)
    model = load_user(user_file, "DistVAE")().eval()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "repo" / "m" / "1"
    argv = ["torch", f"{user_file}:DistVAE", str(out), "--weights", str(weights), "--encode", "posterior"]
    argv += ["--decode", "likelihood", *SHAPE, "--likelihood", "bernoulli", "--decoder-output", "logits", "--name", "m"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "returns a Normal distribution" in capsys.readouterr().out
    served = load_model_dir(out)
    assert served.manifest.io.encoder.posterior == "scale"
    pixels = np.random.default_rng(0).random((3, 1, 4, 4), dtype=np.float32)
    mean, logvar = served.encode(pixels)
    with torch.no_grad():
        posterior = model.posterior(torch.from_numpy(pixels)).base_dist
        likelihood = model.likelihood(torch.from_numpy(mean)).base_dist
    np.testing.assert_allclose(mean, posterior.loc.numpy(), atol=1e-6)
    np.testing.assert_allclose(logvar, 2 * np.log(posterior.scale.numpy()), atol=1e-5)
    np.testing.assert_allclose(served.decode(mean)[0], likelihood.logits.numpy(), atol=1e-5)


def test_a_returned_distribution_that_contradicts_the_declaration_is_refused(user_file, tmp_path, capsys):
    out = tmp_path / "repo" / "m" / "1"
    argv = ["torch", f"{user_file}:DistVAE", str(out), "--encode", "posterior", "--decode", "likelihood", *SHAPE]
    argv += ["--likelihood", "gaussian", "--decoder-output", "mean", "--sigma", "0.1", "--name", "m"]
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert "returns a torch.distributions.Bernoulli" in message
    assert "--likelihood bernoulli --decoder-output logits" in message
    assert not out.exists()


def test_submodules_serve_as_the_methods(user_file, tmp_path, capsys):
    out = tmp_path / "repo" / "h" / "1"
    argv = ["torch", f"{user_file}:Halves", str(out), "--encode", "encoder", "--decode", "decoder", *SHAPE]
    argv += ["--likelihood", "bernoulli", "--decoder-output", "logits", "--name", "h"]
    assert main(argv) == 0, capsys.readouterr().err
    assert load_model_dir(out).manifest.latent_dim == 2


def test_weights_saved_from_a_wrapper_load_without_its_prefix(user_file, tmp_path, capsys):
    torch.manual_seed(3)
    wrapped = load_user(user_file, "Wrapped")()
    weights = tmp_path / "lightning.pt"
    torch.save({"state_dict": wrapped.state_dict()}, weights)  # keys "model.encoder.1.weight", ...
    out = tmp_path / "repo" / "w" / "1"
    argv = ["torch", f"{user_file}:DistVAE", str(out), "--weights", str(weights), "--encode", "posterior"]
    argv += ["--decode", "likelihood", *SHAPE, "--likelihood", "bernoulli", "--decoder-output", "logits", "--name", "w"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "prefix 'model.'" in capsys.readouterr().out
    pixels = np.random.default_rng(1).random((2, 1, 4, 4), dtype=np.float32)
    with torch.no_grad():
        expected = wrapped.model.posterior(torch.from_numpy(pixels)).base_dist.loc.numpy()
    np.testing.assert_allclose(load_model_dir(out).encode(pixels)[0], expected, atol=1e-6)
