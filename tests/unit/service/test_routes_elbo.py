"""/elbo's estimators over the routes: prior and importance sampling, their standard error and ESS,
for both likelihoods, and the same knobs through the open inference protocol's M.elbo."""

import json

import numpy as np
import pytest

from model.core import scoring
from model.core.preprocess import PreprocessContract, array_to_png, bytes_to_array
from tests.unit.service.conftest import build, client_for, png_bytes
from tests.unit.service.fakes import FakeVAE, LinearGaussianVAE

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}
NEW_FIELDS = ("log_likelihood_standard_error", "effective_sample_size")


def _pixels(fake, body: bytes) -> np.ndarray:
    """(1, C, H, W): the pixels the server decodes from an upload."""
    return bytes_to_array(body, PreprocessContract.from_dict(fake.manifest.preprocessing))[None]


async def test_the_default_is_importance_sampling_with_the_numbers_of_the_scoring_module(client, app_and_fake):
    """Exactly the scores /elbo gave before the estimators existed, plus the new fields."""
    _, fake = app_and_fake
    body = (await client.post("/elbo?k=30&seed=2", content=png_bytes(4), headers=PNG)).json()
    data = fake.likelihood.images_to_data_space(_pixels(fake, png_bytes(4)), 0)
    expected = scoring.score(fake, fake.likelihood, data, 2, k=30)
    result = body["results"][0]
    assert body["estimator"] == "importance"
    assert [result[key] for key in ("elbo", "reconstruction", "kl", "log_likelihood")] == [
        float(expected.elbo[0]),
        float(expected.reconstruction[0]),
        float(expected.kl[0]),
        float(expected.log_likelihood[0]),
    ]
    assert result["log_likelihood_standard_error"] == float(expected.standard_error[0]) > 0
    assert 1 <= result["effective_sample_size"] == float(expected.effective_sample_size[0]) <= 30


async def test_the_prior_estimator_samples_z_from_the_prior(client, app_and_fake):
    _, fake = app_and_fake
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(2)]
    body = (await client.post("/elbo?k=40&seed=3&estimator=prior", files=files)).json()
    pixels = np.concatenate([_pixels(fake, png_bytes(i)) for i in range(2)])
    expected = scoring.score(
        fake, fake.likelihood, fake.likelihood.images_to_data_space(pixels, 0), 3, k=40, estimator="prior"
    )
    assert body["estimator"] == "prior" and body["k"] == 40
    for i, result in enumerate(body["results"]):
        assert result["log_likelihood"] == pytest.approx(expected.log_likelihood[i], rel=1e-12)
        assert result["log_likelihood_standard_error"] == pytest.approx(expected.standard_error[i], rel=1e-9)
        assert result["effective_sample_size"] == pytest.approx(expected.effective_sample_size[i], rel=1e-9)
        assert result["elbo"] == pytest.approx(expected.elbo[i], rel=1e-12)  # the ELBO is the encoder's either way


async def test_with_k_1_there_is_no_estimate_from_either_estimator(client):
    for estimator in ("prior", "importance"):
        body = (await client.post(f"/elbo?estimator={estimator}", content=png_bytes(0), headers=PNG)).json()
        result = body["results"][0]
        assert body["estimator"] == estimator
        assert [result[key] for key in ("log_likelihood", *NEW_FIELDS)] == [None, None, None]


@pytest.mark.parametrize("value", ["uniform", "", "PRIOR", "importance,prior"])
async def test_an_unknown_estimator_is_422_naming_the_choices(client, value):
    response = await client.post(f"/elbo?k=2&estimator={value}", content=png_bytes(0), headers=PNG)
    body = response.json()
    assert response.status_code == 422 and body["error"]["code"] == "invalid_request"
    assert "estimator" in body["error"]["message"] and "'importance' or 'prior'" in body["error"]["message"]


async def test_a_named_model_takes_the_estimator_too(client):
    one = (await client.post("/v1/models/fake-vae/elbo?k=5&estimator=prior", content=png_bytes(1), headers=PNG)).json()
    other = (await client.post("/elbo?k=5&estimator=prior", content=png_bytes(1), headers=PNG)).json()
    assert one["estimator"] == "prior" and one["results"] == other["results"]


async def test_the_anomaly_route_refuses_an_estimator_naming_what_it_accepts():
    app, _ = build(FakeVAE(calibrated=True))
    async with client_for(app) as client:
        plain = (await client.post("/anomaly", content=png_bytes(0), headers=PNG)).json()
        asked = await client.post("/anomaly?estimator=prior", content=png_bytes(0), headers=PNG)
    assert "estimator" not in plain and plain["results"][0]["score"] is not None
    error = asked.json()["error"]
    assert asked.status_code == 422 and error["code"] == "unknown_parameter"
    assert error["message"] == (
        "unknown query parameter 'estimator' on /anomaly; the parameters accepted are: fpr, seed, binarize_seed"
    )


async def test_a_misspelt_query_parameter_is_a_422_not_its_default(client):
    response = await client.post("/elbo?kk=10", content=png_bytes(0), headers=PNG)
    error = response.json()["error"]
    assert response.status_code == 422 and error["code"] == "unknown_parameter" and "'kk'" in error["message"]
    assert "k, seed" in error["message"]


@pytest.mark.parametrize("estimator", ["prior", "importance"])
async def test_a_gaussian_model_converges_on_its_closed_form_log_likelihood(estimator):
    """A linear-Gaussian VAE behind the whole route: upload, dequantisation, scoring, JSON. The exact
    8-bit log-probability is log N(x | b, W W^T + sigma^2 I) - P log 256 of the dequantised image."""
    fake = LinearGaussianVAE()
    app, _ = build(fake, max_k=20_000)
    pngs = [array_to_png(x) for x in fake.draw(2, seed=0)]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(pngs)]
    async with client_for(app) as client:
        body = (await client.post(f"/elbo?k=20000&estimator={estimator}", files=files)).json()
    pixels = np.concatenate([_pixels(fake, data) for data in pngs])  # as the server decoded them
    data = fake.likelihood.images_to_data_space(pixels, body["binarize_seed"])
    truth = [fake.log_px(x) + fake.likelihood.discrete_offset(x.size) for x in data]
    assert "dequantised" in body["data_space"]
    for result, exact in zip(body["results"], truth, strict=False):
        assert result["log_likelihood"] == pytest.approx(exact, abs=0.25)
        assert abs(result["log_likelihood"] - exact) < 4 * result["log_likelihood_standard_error"]


async def test_on_the_gaussian_model_the_prior_has_far_fewer_effective_samples():
    fake = LinearGaussianVAE()
    app, _ = build(fake, max_k=20_000)
    files = [("file", (f"{i}.png", array_to_png(x), "image/png")) for i, x in enumerate(fake.draw(2, seed=1))]
    async with client_for(app) as client:
        prior, importance = [
            (await client.post(f"/elbo?k=2000&estimator={e}", files=files)).json()["results"]
            for e in ("prior", "importance")
        ]
    for p, q in zip(prior, importance, strict=False):
        assert p["effective_sample_size"] < q["effective_sample_size"] / 10
        assert p["log_likelihood_standard_error"] > 3 * q["log_likelihood_standard_error"]


# ---- the open inference protocol's M.elbo ----


async def test_v2_elbo_takes_the_estimator_and_returns_its_error_and_ess(client, app_and_fake):
    pixels = _pixels(app_and_fake[1], png_bytes(6))  # the noise follows the exact floats: send the decoded ones
    request = {
        "parameters": {"k": 25, "seed": 1, "estimator": "prior"},
        "inputs": [
            {"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()}
        ],
    }
    response = await client.post("/v2/models/fake-vae.elbo/infer", json=request)
    answer = response.json()
    assert response.status_code == 200 and answer["parameters"]["estimator"] == "prior"
    outputs = {o["name"]: o["data"][0] for o in answer["outputs"]}
    native = (await client.post("/elbo?k=25&seed=1&estimator=prior", content=png_bytes(6), headers=PNG)).json()[
        "results"
    ][0]
    for name in ("log_likelihood", *NEW_FIELDS):
        assert outputs[name] == pytest.approx(native[name], rel=1e-9)


async def test_v2_elbo_refuses_an_unknown_estimator_as_the_protocols_400(client):
    request = {
        "parameters": {"k": 2, "estimator": "uniform"},
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}],
    }
    response = await client.post("/v2/models/fake-vae.elbo/infer", json=request)
    body = response.json()
    assert response.status_code == 400 and set(body) == {"error"}
    assert "parameter estimator" in body["error"] and "'importance' or 'prior'" in body["error"]


async def test_v2_elbo_metadata_lists_the_new_outputs_and_the_parameter(client):
    meta = (await client.get("/v2/models/fake-vae.elbo")).json()
    assert {"log_likelihood_standard_error", "effective_sample_size"} <= {o["name"] for o in meta["outputs"]}
    estimator = next(p for p in meta["parameters"] if p["name"] == "estimator")
    assert estimator["default"] == "importance" and "prior" in estimator["description"]
    assert json.dumps(meta)  # plain JSON, no enum objects
