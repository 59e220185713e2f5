"""/decode reads its JSON body under its own small limit and one parser: size, media type, shape."""

import json

import numpy as np
import pytest

from tests.unit.service.conftest import build, client_for
from tests.unit.service.fakes import LATENT

pytestmark = pytest.mark.anyio


def error_of(response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"], body["error"]["message"]


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
        status, code, message = error_of(response)
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
    status, code, message = error_of(response)
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
    status, code, message = error_of(response)
    assert (status, code) == (422, "invalid_latents")
    assert message == f"z row 0, element {LATENT - 1} is 'x'; every element must be a finite number"


@pytest.mark.parametrize("body", ['{"z": [0.5, 0.5]}', '{"z": 0.5}', "[[0.5]]", '{"latents": [[0.5]]}'])
async def test_a_body_that_is_not_rows_shows_the_shape_expected(client, body):
    response = await client.post("/decode", content=body, headers={"content-type": "application/json"})
    status, code, message = error_of(response)
    assert (status, code) == (422, "invalid_latents") and '{"z": [[z_1, ..., z_D], ...]}' in message


async def test_a_body_of_nested_lists_is_refused_before_it_is_parsed(client):
    body = '{"z": [' + ",".join(["[[[[]]]]"] * 20_000) + "]}"
    status, code, message = error_of(
        await client.post("/decode", content=body, headers={"content-type": "application/json"})
    )
    assert (status, code) == (422, "invalid_latents") and message.startswith("z must be a list of 1 to")
