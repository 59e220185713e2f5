"""The routes that take latents (service/routes/latents.py): /decode, its JSON body read under its own
small limit and one parser (size, media type, shape), and /sample."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from model.core.likelihoods import LIKELIHOODS
from tests.unit.service.conftest import build, client_for, error_of, error_with_message
from tests.unit.service.fakes import LATENT, SHAPE

pytestmark = pytest.mark.anyio


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


async def test_a_json_body_over_max_json_bytes_is_413_naming_the_setting():
    app, _ = build(max_json_bytes=1000)
    body = json.dumps({"z": [[0.5] * LATENT] * 60})
    assert len(body) > 1000
    async with client_for(app) as client:
        declared = await client.post("/decode", content=body, headers={"content-type": "application/json"})

        async def chunks():  # no Content-Length: the limit is counted as the body arrives
            for start in range(0, len(body), 100):
                yield body[start : start + 100].encode()

        streamed = await client.post("/decode", content=chunks(), headers={"content-type": "application/json"})
    for response in (declared, streamed):
        status, code, message = error_with_message(response)
        assert (status, code) == (413, "payload_too_large") and "VAE_MAX_JSON_BYTES" in message


async def test_a_body_just_under_the_limit_is_decoded():
    body = json.dumps({"z": [[0.25] * LATENT] * 2})
    app, _ = build(max_json_bytes=len(body))
    async with client_for(app) as client:
        response = await client.post("/decode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and len(response.json()["images"]) == 2


@pytest.mark.parametrize("media_type", ["text/plain", "application/x-www-form-urlencoded", "image/png"])
async def test_a_non_json_media_type_is_415(client, media_type):
    response = await client.post(
        "/decode", content=json.dumps({"z": [[0.0] * LATENT]}), headers={"content-type": media_type}
    )
    status, code, message = error_with_message(response)
    assert (status, code) == (415, "unsupported_media_type") and "application/json" in message


async def test_a_json_suffix_media_type_and_a_missing_one_are_accepted(client):
    body = json.dumps({"z": np.zeros((1, LATENT)).tolist()})
    for headers in ({"content-type": "application/vnd.api+json"}, {"content-type": "application/json; charset=utf-8"}):
        response = await client.post("/decode", content=body, headers=headers)
        assert response.status_code == 200 and len(response.json()["images"]) == 1


async def test_validation_errors_say_where(client):
    row = [0.0] * (LATENT - 1) + ["x"]
    response = await client.post(
        "/decode", content=json.dumps({"z": [row]}), headers={"content-type": "application/json"}
    )
    status, code, message = error_with_message(response)
    assert (status, code) == (422, "invalid_latents")
    assert message == f"z row 0, element {LATENT - 1} is 'x'; every element must be a finite number"


@pytest.mark.parametrize("body", ['{"z": [0.5, 0.5]}', '{"z": 0.5}', "[[0.5]]", '{"latents": [[0.5]]}'])
async def test_a_body_that_is_not_rows_shows_the_shape_expected(client, body):
    response = await client.post("/decode", content=body, headers={"content-type": "application/json"})
    status, code, message = error_with_message(response)
    assert (status, code) == (422, "invalid_latents") and '{"z": [[z_1, ..., z_D], ...]}' in message


async def test_a_body_of_nested_lists_is_refused_before_it_is_parsed(client):
    body = '{"z": [' + ",".join(["[[[[]]]]"] * 20_000) + "]}"
    status, code, message = error_with_message(
        await client.post("/decode", content=body, headers={"content-type": "application/json"})
    )
    assert (status, code) == (422, "invalid_latents") and message.startswith("z must be a list of 1 to")
