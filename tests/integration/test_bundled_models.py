"""Every model of the bundled repository, served as `make serve` and the image serve it, answers every
operation with a body that fits its likelihood: the Bernoulli default and the Gaussian model."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import png

BUNDLED = {"fashion-mnist-vae": "bernoulli", "fashion-mnist-gaussian": "gaussian"}
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def client(bundled_client):
    return bundled_client


@pytest.fixture(scope="module")
def served(client) -> dict[str, str]:
    """name -> the path prefix of its default version."""
    models = client.get("/v1/models").json()["models"]
    return {m["name"]: f"/v1/models/{m['name']}/versions/{m['default_version']}" for m in models}


def test_both_bundled_models_are_served_and_the_bernoulli_one_is_the_default(client, served):
    assert set(BUNDLED) <= set(served)
    assert client.get("/v1/model").json()["model"]["name"] == "fashion-mnist-vae"


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_the_card_names_the_likelihood_and_its_test_metrics(client, served, name):
    card = client.get(served[name]).json()
    assert card["likelihood"]["name"] == BUNDLED[name]
    assert card["metrics"]["iwae_k"] == 5000 and card["metrics"]["nll_nats"] == -card["metrics"]["log_likelihood"]
    if BUNDLED[name] == "gaussian":
        assert card["likelihood"]["outputs"] == ["mean", "log_scale"]


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_scores_encode_and_reconstruct_fit_the_likelihood(client, served, name, test_images):
    prefix = served[name]
    body = client.post(f"{prefix}/elbo?k=100&seed=3", content=png(test_images[0]), headers=PNG).json()
    score = body["results"][0]
    assert body["model"]["name"] == name
    assert ("dequantised" if BUNDLED[name] == "gaussian" else "binarised") in body["data_space"]
    # a one-sample ELBO may land above the k=100 estimate, but not far from it
    assert math.isfinite(score["elbo"]) and abs(score["log_likelihood"] - score["elbo"]) < 0.05 * abs(score["elbo"])
    # probabilities of the 8-bit (or binary) image: never above 0 nats, and the bits agree with the nats
    assert score["log_likelihood"] < 0
    assert score["bits_per_dim"] == pytest.approx(-score["elbo"] / (784 * math.log(2)), rel=1e-5)

    latents = client.post(f"{prefix}/encode", content=png(test_images[0]), headers=PNG).json()
    assert len(latents["results"][0]["mean"]) == latents["latent_dim"]
    recon = client.post(f"{prefix}/reconstruct", content=png(test_images[0]), headers=PNG)
    pixels = np.asarray(Image.open(io.BytesIO(recon.content)), dtype=np.float32) / 255
    assert pixels.shape == (28, 28) and np.abs(pixels - test_images[0, 0]).mean() < 0.15


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_sampling_is_seeded_and_anomaly_scores_are_calibrated(client, served, name, test_images):
    prefix = served[name]
    first, again = (client.get(f"{prefix}/sample?n=4&seed=11&format=json").json() for _ in range(2))
    assert first["samples"] == again["samples"] and first["seed"] == 11
    image = Image.open(io.BytesIO(base64.b64decode(first["samples"][0]["png_base64"])))
    assert image.size == (28, 28)
    anomaly = client.post(f"{prefix}/anomaly", content=png(test_images[1]), headers=PNG).json()
    assert anomaly["model"]["name"] == name and 0.0 <= anomaly["results"][0]["percentile"] <= 1.0
