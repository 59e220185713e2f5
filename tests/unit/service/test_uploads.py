"""Request bodies under a hard byte limit, and the image upload forms: a raw image/* body or multipart."""

import pytest
from fastapi import FastAPI, Request

from service.errors import ApiError
from service.uploads import read_body
from tests.unit.service.conftest import client_for, png_bytes

pytestmark = pytest.mark.anyio


def echo_app(limit: int) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        try:
            return {"length": len(await read_body(request, limit))}
        except ApiError as exc:
            return {"status": exc.status, "code": exc.code, "message": exc.message}

    return app


async def test_a_body_within_the_limit_is_read_whole():
    async with client_for(echo_app(10)) as client:
        assert (await client.post("/echo", content=b"x" * 10)).json() == {"length": 10}


async def test_a_declared_length_over_the_limit_is_refused_before_reading():
    async with client_for(echo_app(10)) as client:
        answer = (await client.post("/echo", content=b"x" * 11)).json()
    assert answer == {
        "status": 413,
        "code": "payload_too_large",
        "message": "request body exceeds the limit of 10 bytes (VAE_MAX_UPLOAD_BYTES)",
    }


async def test_a_streamed_body_is_refused_as_soon_as_it_crosses_the_limit():
    async def chunks():
        for _ in range(5):
            yield b"x" * 4

    async with client_for(echo_app(10)) as client:
        assert (await client.post("/echo", content=chunks())).json()["status"] == 413


async def test_an_image_route_names_the_forms_it_accepts(client):
    response = await client.post("/encode", content=png_bytes(), headers={"content-type": "text/plain"})
    error = response.json()["error"]
    assert response.status_code == 415 and error["code"] == "unsupported_media_type"
    assert "image/png" in error["message"] and "multipart/form-data" in error["message"]


async def test_multipart_needs_parts_named_file(client):
    response = await client.post("/encode", files=[("image", ("a.png", png_bytes(), "image/png"))])
    assert response.status_code == 422 and response.json()["error"]["code"] == "missing_file"


async def test_multipart_over_the_batch_is_refused(client):
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(9)]  # the fake app's max_batch is 8
    response = await client.post("/encode", files=files)
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_many_images"
