"""The error layer (service/errors.py): one body in either shape, a generic 500 that leaks nothing,
Starlette's own errors reshaped."""

import pytest

from tests.unit.service.conftest import build, client_for, png_bytes
from tests.unit.service.fakes import FakeVAE

pytestmark = pytest.mark.anyio


PNG = {"content-type": "image/png"}


def error_of(response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"]


async def test_unexpected_errors_are_500_without_internals():
    app, _ = build(FakeVAE(broken=True))
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(0), headers=PNG)
    assert error_of(response) == (500, "internal_error")
    assert "secret" not in response.text and "/opt/model" not in response.text


async def test_unknown_route_and_method_use_the_error_shape(client):
    assert error_of(await client.get("/nope")) == (404, "not_found")
    assert error_of(await client.get("/encode")) == (405, "method_not_allowed")
