"""Routes in-process over httpx's ASGI transport, with a fake model: bodies, not just statuses."""

import base64
import io
import json
import math
import threading
import time

import anyio
import numpy as np
import pytest
from PIL import Image

from model.core import scoring
from model.core.likelihoods import LIKELIHOODS
from model.core.preprocess import bytes_to_array
from tests.unit.service.conftest import build, client_for, png_bytes
from tests.unit.service.fakes import LATENT, SHAPE, FakeVAE

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"]


async def test_encode_returns_the_models_posterior_for_the_pixels(client, app_and_fake):
    _, fake = app_and_fake
    data = png_bytes(1)
    response = await client.post("/encode", content=data, headers=PNG)
    body = response.json()
    assert response.status_code == 200 and body["model"] == {"name": "fake-vae", "version": "9.9.9"}
    expected_mean, _ = fake.encode(bytes_to_array(data, fake_contract())[None])
    np.testing.assert_allclose(body["results"][0]["mean"], expected_mean[0], rtol=1e-6)
    assert body["results"][0]["logvar"] == [-1.0] * LATENT and "z" not in body["results"][0]


def fake_contract():
    from model.core.preprocess import PreprocessContract

    return PreprocessContract(input_shape=SHAPE)


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


async def test_body_over_the_limit_is_413():
    app, _ = build(max_upload_bytes=1000)
    async with client_for(app) as client:
        response = await client.post("/encode", content=b"x" * 1001, headers=PNG)
    assert error_of(response) == (413, "payload_too_large")


async def test_image_over_the_pixel_limit_is_413_before_decoding():
    app, _ = build(max_image_pixels=100)
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(0, size=(20, 20)), headers=PNG)
    assert error_of(response) == (413, "image_too_large")


async def test_decode_json_gives_pngs_of_the_declared_shape_and_pixels_on_request(client, app_and_fake):
    _, fake = app_and_fake
    z = [[0.1 * i for i in range(LATENT)], [0.0] * LATENT]
    body = (await client.post("/decode?pixels=true", json={"z": z})).json()
    assert len(body["images"]) == 2
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png_base64"])))
    assert image.size == (SHAPE[2], SHAPE[1]) and image.mode == "L"
    expected = LIKELIHOODS["bernoulli"].pixel_mean(fake.decode(np.asarray(z, dtype=np.float32)))
    np.testing.assert_allclose(body["images"][0]["pixels"], expected[0], rtol=1e-6)


async def test_decode_png_and_grid(client):
    one = await client.post("/decode?format=png", json={"z": [[0.0] * LATENT]})
    assert one.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(one.content)).size == (8, 8)
    grid = await client.post("/decode?format=grid", json={"z": [[0.0] * LATENT] * 4})
    assert Image.open(io.BytesIO(grid.content)).size == (2 * 10 + 2, 2 * 10 + 2)  # 2x2 tiles, 2px padding


@pytest.mark.parametrize(
    ("body", "query", "code"),
    [
        ('{"z": [[1, 2]]}', "", "invalid_latents"),
        ('{"z": []}', "", "invalid_latents"),
        ('{"z": [[NaN, 0, 0, 0]]}', "", "invalid_request"),
        ('{"z": [[Infinity, 0, 0, 0]]}', "", "invalid_request"),
        ('{"z": [[1e39, 0, 0, 0]]}', "", "invalid_latents"),
        (json.dumps({"z": [[0, 0, 0, 0]] * 9}), "", "invalid_latents"),
        (json.dumps({"z": [[0, 0, 0, 0]] * 2}), "?format=png", "invalid_format"),
        ('{"z": "nope"}', "", "invalid_latents"),
        ('{"z": [[0,0,0,0]], "extra": 1}', "", "invalid_latents"),
        ("not json", "", "invalid_request"),
    ],
)
async def test_bad_latents_are_422(client, body, query, code):
    response = await client.post(f"/decode{query}", content=body, headers={"content-type": "application/json"})
    assert error_of(response) == (422, code)


async def test_sample_same_seed_same_bytes_and_grid_shape(client):
    a = await client.get("/sample?n=6&seed=3")
    b = await client.get("/sample?n=6&seed=3")
    c = await client.get("/sample?n=6&seed=4")
    assert a.content == b.content != c.content and a.headers["x-seed"] == "3"
    assert Image.open(io.BytesIO(a.content)).size == (3 * 10 + 2, 2 * 10 + 2)


async def test_sample_json_returns_latents_scaled_by_temperature(client):
    cold = (await client.get("/sample?n=2&seed=1&temperature=0.5&format=json")).json()
    warm = (await client.get("/sample?n=2&seed=1&temperature=1&format=json")).json()
    np.testing.assert_allclose(cold["samples"][0]["z"], 0.5 * np.asarray(warm["samples"][0]["z"]), rtol=1e-6)
    assert cold["seed"] == 1 and len(cold["samples"]) == 2


async def test_sample_without_seed_reports_a_seed_that_reproduces_it(client):
    drawn = (await client.get("/sample?n=3&format=json")).json()
    again = (await client.get(f"/sample?n=3&seed={drawn['seed']}&format=json")).json()
    assert again["samples"] == drawn["samples"]
    grid = await client.get("/sample?n=3")
    assert (await client.get(f"/sample?n=3&seed={grid.headers['x-seed']}")).content == grid.content
    other = (await client.get(f"/sample?n=3&seed={drawn['seed'] + 1}&format=json")).json()
    assert other["samples"] != drawn["samples"]


@pytest.mark.parametrize(
    "query", ["n=0", "n=9", "temperature=0", "temperature=10.5", "temperature=nan", "seed=-1", "n=abc", "format=gif"]
)
async def test_bad_sample_parameters_are_422(client, query):
    status, _ = error_of(await client.get(f"/sample?{query}"))
    assert status == 422


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


async def test_not_ready_answers_503_on_model_routes_and_readyz():
    app, _ = build(ready=False)
    async with client_for(app) as client:
        assert error_of(await client.get("/readyz")) == (503, "not_ready")
        assert error_of(await client.get("/sample")) == (503, "not_ready")
        assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_readyz_names_the_model_when_ready(client):
    assert (await client.get("/readyz")).json() == {
        "status": "ready",
        "model": {"name": "fake-vae", "version": "9.9.9"},
    }


async def test_model_card(client):
    body = (await client.get("/v1/model")).json()
    assert body["latent_dim"] == LATENT and body["input"]["shape"] == list(SHAPE)
    assert body["preprocessing"]["mode"] == "L" and body["limits"]["max_batch"] == 8


async def test_unexpected_errors_are_500_without_internals():
    app, _ = build(FakeVAE(broken=True))
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(0), headers=PNG)
    assert error_of(response) == (500, "internal_error")
    assert "secret" not in response.text and "/opt/model" not in response.text


class GatedVAE(FakeVAE):
    """Encode calls wait at a gate, so a test can hold requests inside the model for as long as it needs."""

    def __init__(self) -> None:
        super().__init__()
        self.gate, self.inside, self._lock = threading.Event(), 0, threading.Lock()

    def encode(self, x):
        with self._lock:
            self.inside += 1
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return super().encode(x)


async def wait_for(condition, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.005)


async def test_overload_is_429_and_the_rest_are_served():
    fake = GatedVAE()
    app, _ = build(fake, max_in_flight=2, inline_cost=0, micro_batch=False)  # one model call per request
    async with client_for(app) as client:

        async def post():
            return await client.post("/encode", content=png_bytes(0), headers=PNG)

        held = []
        async with anyio.create_task_group() as group:

            async def hold():
                held.append(await post())

            for _ in range(2):
                group.start_soon(hold)
            await wait_for(lambda: fake.inside == 2)  # both slots are taken, inside the model
            refused = [await post() for _ in range(3)]
            fake.gate.set()
    assert [error_of(r) for r in refused] == [(429, "overloaded")] * 3
    assert [r.status_code for r in held] == [200, 200] and all(len(r.json()["results"]) == 1 for r in held)


async def test_request_id_is_echoed_or_made(client):
    echoed = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32


async def test_unknown_route_and_method_use_the_error_shape(client):
    assert error_of(await client.get("/nope")) == (404, "not_found")
    assert error_of(await client.get("/encode")) == (405, "method_not_allowed")


async def test_metrics_count_requests_by_route_and_status(client):
    await client.get("/sample?n=2&seed=1")
    await client.get("/sample?n=0")
    text = (await client.get("/metrics")).text
    assert 'vae_requests_total{method="GET",route="/sample",status="200"} 1.0' in text
    assert 'vae_requests_total{method="GET",route="/sample",status="422"} 1.0' in text
    assert "vae_request_duration_seconds_bucket" in text
    assert 'vae_images_processed_total{model="fake-vae",operation="sample",version="9.9.9"} 2.0' in text
    assert "vae_inference_duration_seconds" in text


async def test_openapi_documents_every_parameter_and_error(client):
    spec = (await client.get("/openapi.json")).json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                assert parameter.get("description"), f"{method} {path} {parameter['name']} has no description"
    assert {"400", "413", "415", "422", "429", "503"} <= set(spec["paths"]["/encode"]["post"]["responses"])
    assert "multipart/form-data" in spec["paths"]["/elbo"]["post"]["requestBody"]["content"]
    assert "ErrorBody" in spec["components"]["schemas"]


async def test_a_chunked_body_over_the_limit_is_413_on_json_routes_too():
    app, _ = build(max_upload_bytes=100)

    async def chunks():
        for _ in range(10):
            yield b'{"z": [' + b" " * 50

    async with client_for(app) as client:
        response = await client.post("/decode", content=chunks(), headers={"content-type": "application/json"})
        declared = await client.post(
            "/decode", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"}
        )
    assert error_of(response) == (413, "payload_too_large")
    assert error_of(declared) == (413, "payload_too_large")
