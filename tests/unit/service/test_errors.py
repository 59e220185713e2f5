"""The error layer (service/errors.py): one body in either shape, a generic 500 that leaks nothing,
Starlette's own errors reshaped."""

import json

import pytest

from service.errors import ErrorShape, error_body, error_bytes
from service.v2.errors import error_shape
from tests.unit.service.conftest import PNG, build, client_for, error_of, png_bytes
from tests.unit.service.fakes import FakeVAE

pytestmark = pytest.mark.anyio


async def test_unexpected_errors_are_500_without_internals():
    app, _ = build(FakeVAE(broken=True))
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(0), headers=PNG)
    assert error_of(response) == (500, "internal_error")
    assert "secret" not in response.text and "/opt/model" not in response.text


async def test_unknown_route_and_method_use_the_error_shape(client):
    assert error_of(await client.get("/nope")) == (404, "not_found")
    assert error_of(await client.get("/encode")) == (405, "method_not_allowed")


def test_one_builder_writes_both_shapes():
    assert error_body("not_found", "no route /x") == {"error": {"code": "not_found", "message": "no route /x"}}
    assert error_body("not_found", "no route /v2/x", ErrorShape.V2) == {"error": "no route /v2/x"}
    assert json.loads(error_bytes("overloaded", "retry", ErrorShape.V2)) == {"error": "retry"}


def test_the_v2_package_owns_the_shape_of_its_paths():
    assert error_shape("/v2") is ErrorShape.V2 and error_shape("/v2/models/m/infer") is ErrorShape.V2
    assert error_shape("/v2x") is ErrorShape.NATIVE and error_shape("/encode") is ErrorShape.NATIVE


async def test_a_413_before_routing_takes_the_shape_of_its_path():
    app, _ = build(max_upload_bytes=10)
    async with client_for(app) as client:
        native = await client.post("/encode", content=b"x" * 20, headers={"content-type": "image/png"})
        protocol = await client.post("/v2/models/fake-vae.encode/infer", content=b"x" * 20)
    assert native.status_code == protocol.status_code == 413
    assert native.json()["error"]["code"] == "payload_too_large"
    assert protocol.json() == {"error": "request body exceeds the limit of 10 bytes"}
