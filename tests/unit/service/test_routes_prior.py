"""A model directory with a learned prior (prior.onnx) served in process: /sample draws from the mixture
with the request's seed, and /elbo, IWAE, /anomaly and the open inference protocol's operations score
with it; the model card names it."""

import shutil

import numpy as np
import pytest

from model.core import scoring
from model.core.artifact import load_model_dir
from model.core.preprocess import PreprocessContract, bytes_to_array
from model.core.priors import StandardNormal
from tests.unit.export.test_shipped_model import SHIPPED
from tests.unit.model.core.prior_graphs import add_prior, toy_mixture
from tests.unit.model.core.test_artifact import SERVING_FILES, NumpyPrior
from tests.unit.service.conftest import PNG, build, client_for, png_bytes

pytestmark = pytest.mark.anyio
MIXTURE = toy_mixture(32)  # the shipped model's latent size


@pytest.fixture(scope="module")
def with_prior(tmp_path_factory):
    """The shipped model's graphs and calibration, with MIXTURE as its prior."""
    directory = tmp_path_factory.mktemp("with-prior")
    for name in SERVING_FILES:
        shutil.copy(SHIPPED / name, directory / name)
    add_prior(directory, MIXTURE)
    return load_model_dir(directory)


@pytest.fixture(scope="module")
def standard():
    return load_model_dir(SHIPPED)


@pytest.fixture
async def prior_client(with_prior):
    app, _ = build(with_prior)
    async with client_for(app) as c:
        yield c


def pixels_of(model, body: bytes) -> np.ndarray:
    """(1, C, H, W): the pixels the server decodes from an upload."""
    return bytes_to_array(body, PreprocessContract.from_dict(model.manifest.preprocessing))[None]


def upload(seed: int) -> bytes:
    return png_bytes(seed, size=(28, 28))


async def test_sample_draws_the_mixture_with_the_requests_seed(prior_client):
    grids = [(await prior_client.get("/sample?n=6&seed=3")).content for _ in range(2)]
    assert grids[0] == grids[1] and grids[0].startswith(b"\x89PNG")
    assert grids[0] != (await prior_client.get("/sample?n=6&seed=4")).content
    body = (await prior_client.get("/sample?n=6&seed=3&temperature=0.5&format=json")).json()
    z = np.array([s["z"] for s in body["samples"]], dtype=np.float32)
    np.testing.assert_array_equal(z, MIXTURE.sample(6, np.random.default_rng(3), 0.5))
    assert not np.allclose(z, StandardNormal(32).sample(6, np.random.default_rng(3), 0.5), atol=0.1)


async def test_the_protocols_sample_is_the_native_one(prior_client):
    native = (await prior_client.get("/sample?n=3&seed=8&format=json")).json()
    v2 = (
        await prior_client.post(
            "/v2/models/fashion-mnist-vae.sample/infer",
            json={"inputs": [], "outputs": [{"name": "z"}], "parameters": {"n": 3, "seed": 8}},
        )
    ).json()
    outputs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in v2["outputs"]}
    np.testing.assert_array_equal(outputs["z"], np.array([s["z"] for s in native["samples"]], dtype=np.float32))


async def test_elbo_and_iwae_score_with_the_prior(prior_client, with_prior, standard):
    body = (await prior_client.post("/elbo?k=20&seed=2", content=upload(1), headers=PNG)).json()
    result = body["results"][0]
    data = with_prior.likelihood.images_to_data_space(pixels_of(with_prior, upload(1)), body["binarize_seed"])
    expected = scoring.score(NumpyPrior(with_prior, MIXTURE), with_prior.likelihood, data, 2, k=20)
    for name in ("elbo", "kl", "log_likelihood"):
        assert result[name] == pytest.approx(float(getattr(expected, name)[0]), abs=1e-4), name
    under_standard = scoring.score(standard, standard.likelihood, data, 2, k=20)
    assert result["reconstruction"] == float(under_standard.reconstruction[0])  # the same z, the same decode
    assert (
        abs(result["kl"] - under_standard.kl[0]) > 1.0
        and abs(result["log_likelihood"] - under_standard.log_likelihood[0]) > 1.0
    )


async def test_the_prior_estimator_samples_the_mixture(prior_client, with_prior):
    body = (await prior_client.post("/elbo?k=30&seed=5&estimator=prior", content=upload(2), headers=PNG)).json()
    data = with_prior.likelihood.images_to_data_space(pixels_of(with_prior, upload(2)), body["binarize_seed"])
    expected = scoring.score(NumpyPrior(with_prior, MIXTURE), with_prior.likelihood, data, 5, k=30, estimator="prior")
    assert body["results"][0]["log_likelihood"] == pytest.approx(float(expected.log_likelihood[0]), abs=1e-6)


async def test_the_anomaly_statistics_use_the_prior(prior_client):
    elbo = (await prior_client.post("/elbo?seed=0&binarize_seed=0", content=upload(3), headers=PNG)).json()
    anomaly = (await prior_client.post("/anomaly?seed=0&binarize_seed=0", content=upload(3), headers=PNG)).json()
    statistics = anomaly["results"][0]["statistics"]
    assert statistics["kl"] == elbo["results"][0]["kl"] and statistics["elbo"] == elbo["results"][0]["elbo"]


async def test_the_model_card_names_the_prior(prior_client, with_prior, client):
    card = (await prior_client.get("/v1/model")).json()
    assert card["prior"] == {"name": "mog", "components": 3, "description": "a test mixture of 3 Gaussians"}
    assert card["graphs"]["prior_sha256"] == with_prior.manifest.prior.graph.sha256
    plain = (await client.get("/v1/model")).json()  # the fake model: no prior in its manifest
    assert plain["prior"] == {"name": "standard_normal", "components": 1, "description": "N(0, I)"}
    assert "prior_sha256" not in plain["graphs"]
