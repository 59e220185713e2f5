"""POST /preprocess: the model's input, exactly as the preprocessing contract makes it."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import bytes_to_array
from tests.unit.service.conftest import png_bytes

pytestmark = pytest.mark.anyio


def rgba_png(size=(20, 12), seed=0) -> bytes:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 4)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def levels(pixels: np.ndarray) -> np.ndarray:
    """The contract's [0, 1] floats as the 8-bit grey levels they were made from (pixel / 255)."""
    return np.rint(pixels[0] * 255).astype(np.uint8)


async def test_an_rgba_image_comes_back_as_the_models_input(client, app_and_fake):
    contract = app_and_fake[0].state.vae.resolve().engine.contract
    image = rgba_png()
    response = await client.post("/preprocess", content=image, headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-model-name"] == "fake-vae"
    returned = Image.open(io.BytesIO(response.content))
    assert returned.mode == "L" and returned.size == (8, 8)
    np.testing.assert_array_equal(grey(response.content), levels(bytes_to_array(image, contract)))


async def test_json_answers_one_png_per_image_in_order(client, app_and_fake):
    contract = app_and_fake[0].state.vae.resolve().engine.contract
    images = [png_bytes(0), rgba_png(seed=1), png_bytes(2)]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = await client.post("/v1/models/fake-vae/versions/9.9.9/preprocess?format=json", files=files)
    body = response.json()
    assert body["model"] == {"name": "fake-vae", "version": "9.9.9"} and [i["index"] for i in body["images"]] == [
        0,
        1,
        2,
    ]
    for sent, answer in zip(images, body["images"], strict=False):
        np.testing.assert_array_equal(
            grey(base64.b64decode(answer["png_base64"])), levels(bytes_to_array(sent, contract))
        )


async def test_several_images_as_png_are_one_grid(client):
    files = [("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)]
    response = await client.post("/preprocess", files=files)
    assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size[0] > 8


async def test_a_file_that_is_not_an_image_is_the_usual_400(client):
    files = [("file", ("notes.txt", b"not an image at all", "text/plain"))]
    response = await client.post("/preprocess", files=files)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    assert response.json()["error"]["message"]
