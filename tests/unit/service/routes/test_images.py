"""The image routes (service/routes/images.py) in-process over httpx's ASGI transport, with a fake model:
/encode, /elbo (its estimators, their standard error and ESS, for both likelihoods) and /reconstruct.
Bodies, not just statuses."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from model.core import scoring
from model.core.preprocess import PreprocessContract, array_to_png, bytes_to_array
from tests.unit.service.conftest import PNG, build, client_for, error_of, png_bytes
from tests.unit.service.fakes import LATENT, SHAPE, FakeVAE, LinearGaussianVAE

pytestmark = pytest.mark.anyio


def fake_contract():
    from model.core.preprocess import PreprocessContract

    return PreprocessContract(input_shape=SHAPE)


NEW_FIELDS = ("log_likelihood_standard_error", "effective_sample_size")


def _pixels(fake, body: bytes) -> np.ndarray:
    """(1, C, H, W): the pixels the server decodes from an upload."""
    return bytes_to_array(body, PreprocessContract.from_dict(fake.manifest.preprocessing))[None]


async def test_encode_returns_the_models_posterior_for_the_pixels(client, app_and_fake):
    _, fake = app_and_fake
    data = png_bytes(1)
    response = await client.post("/encode", content=data, headers=PNG)
    body = response.json()
    assert response.status_code == 200 and body["model"] == {"name": "fake-vae", "version": "9.9.9"}
    expected_mean, _ = fake.encode(bytes_to_array(data, fake_contract())[None])
    np.testing.assert_allclose(body["results"][0]["mean"], expected_mean[0], rtol=1e-6)
    assert body["results"][0]["logvar"] == [-1.0] * LATENT and "z" not in body["results"][0]


async def test_encode_sample_is_reproducible_with_a_seed(client):
    async def z(seed):
        r = await client.post(f"/encode?sample=true&seed={seed}", content=png_bytes(1), headers=PNG)
        return r.json()["results"][0]["z"]

    assert await z(5) == await z(5)
    assert await z(5) != await z(6)


async def test_encode_multipart_takes_several_files(client):
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    body = (await client.post("/encode", files=files)).json()
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    assert body["results"][0]["mean"] != body["results"][1]["mean"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"hello"}, 415, "unsupported_media_type"),
        ({"content": b"not a png", "headers": PNG}, 400, "invalid_image"),
        ({"content": png_bytes(0)[:40], "headers": PNG}, 400, "invalid_image"),
        ({"content": b"", "headers": PNG}, 400, "invalid_image"),
        ({"files": [("other", ("a.png", png_bytes(0), "image/png"))]}, 422, "missing_file"),
        ({"files": [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(9)]}, 422, "too_many_images"),
    ],
)
async def test_bad_image_requests_get_their_status_and_code(client, kwargs, status, code):
    assert error_of(await client.post("/encode", **kwargs)) == (status, code)


async def test_image_over_the_pixel_limit_is_413_before_decoding():
    app, _ = build(max_image_pixels=100)
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(0, size=(20, 20)), headers=PNG)
    assert error_of(response) == (413, "image_too_large")


async def test_elbo_matches_the_scoring_module_on_the_same_pixels_and_seed(client, app_and_fake):
    _, fake = app_and_fake
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(2)]
    body = (await client.post("/elbo?k=20&seed=7", files=files)).json()
    pixels = np.stack([bytes_to_array(png_bytes(i), fake_contract()) for i in range(2)])
    expected = scoring.score(fake, fake.likelihood, fake.likelihood.images_to_data_space(pixels, 0), 7, k=20)
    assert body["k"] == 20 and body["seed"] == 7 and "Bernoulli" in body["data_space"]
    for i, result in enumerate(body["results"]):
        assert result["elbo"] == pytest.approx(expected.elbo[i])
        assert result["kl"] == pytest.approx(expected.kl[i])
        assert result["log_likelihood"] == pytest.approx(expected.log_likelihood[i])
        assert result["bits_per_dim"] == pytest.approx(-expected.elbo[i] / (64 * math.log(2)))


async def test_elbo_with_k_1_has_no_log_likelihood(client):
    result = (await client.post("/elbo", content=png_bytes(0), headers=PNG)).json()["results"][0]
    assert result["log_likelihood"] is None and result["elbo"] == pytest.approx(result["reconstruction"] - result["kl"])


@pytest.mark.parametrize("k", ["0", "101", "-3"])
async def test_k_out_of_range_is_422(client, k):
    status, _ = error_of(await client.post(f"/elbo?k={k}", content=png_bytes(0), headers=PNG))
    assert status == 422


async def test_reconstruct_png_and_json(client):
    one = await client.post("/reconstruct", content=png_bytes(0), headers=PNG)
    assert Image.open(io.BytesIO(one.content)).size == (8, 8)
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    body = (await client.post("/reconstruct?format=json", files=files)).json()
    assert len(body["images"]) == 3


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
        "unknown query parameter 'estimator' on /anomaly; the parameters accepted are: fpr, seed, binarize_seed, map"
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
