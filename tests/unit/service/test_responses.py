"""Response helpers, and the hot path's hand-built JSON checked against the response models that
document it (the routes write dicts with orjson rather than build a model per request)."""

import base64
import io

import numpy as np
import orjson
import pytest
from PIL import Image

from service import responses
from service.schemas import DecodeResponse, ElboResponse, EncodeResponse, SampleResponse
from tests.unit.service.conftest import PNG, png_bytes

pytestmark = pytest.mark.anyio


def test_json_response_writes_numpy_arrays_as_lists():
    response = responses.json_response({"mean": np.array([0.5, 0.25], dtype=np.float32)})
    assert response.media_type == "application/json" and orjson.loads(response.body) == {"mean": [0.5, 0.25]}


def test_png_base64_decodes_to_an_image_of_the_same_size():
    png = base64.b64decode(responses.png_base64(np.zeros((1, 4, 6), dtype=np.float32)))
    assert Image.open(io.BytesIO(png)).size == (6, 4)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "model"),
    [
        ("POST", "/encode?sample=true&seed=1", {"content": png_bytes(0), "headers": PNG}, EncodeResponse),
        ("POST", "/elbo?k=4", {"content": png_bytes(0), "headers": PNG}, ElboResponse),
        ("POST", "/decode?format=json", {"json": {"z": [[0.0] * 4]}}, DecodeResponse),
        ("GET", "/sample?n=2&format=json", {}, SampleResponse),
    ],
)
async def test_the_hand_built_bodies_validate_against_their_response_models(client, method, path, kwargs, model):
    response = await client.request(method, path, **kwargs)
    assert response.status_code == 200, response.text
    model.model_validate(response.json())
