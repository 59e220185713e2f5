"""Fuzz what the OpenAPI schema cannot describe: the bytes of images in every accepted format,
mutated (truncated, bytes flipped, bytes inserted), the media-type header, and the request id.

Every answer is a 200 with results or a 4xx JSON error with a code; never a 5xx, never a dropped
connection. Hypothesis is derandomised, so a failure reproduces.
"""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

FORMATS = {  # Pillow save arguments -> the media type the image is sent as
    "png": ({"format": "PNG"}, "image/png"),
    "jpeg": ({"format": "JPEG", "quality": 90}, "image/jpeg"),
    "jpeg-progressive": ({"format": "JPEG", "progressive": True, "quality": 90}, "image/jpeg"),
    "webp": ({"format": "WEBP"}, "image/webp"),
    "bmp": ({"format": "BMP"}, "image/bmp"),
    "gif": ({"format": "GIF"}, "image/gif"),
    "tiff": ({"format": "TIFF", "compression": "tiff_deflate"}, "image/tiff"),
}
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


def image_bytes(kind: str) -> bytes:
    pixels = (np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB" if kind.startswith("jpeg") else "L").save(buffer, **FORMATS[kind][0])
    return buffer.getvalue()


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    size = len(data)
    truncate = st.integers(0, size - 1).map(lambda n: data[:n])
    flip = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: _apply(data, edits)
    )
    insert = st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=64)).map(
        lambda edit: data[: edit[0]] + edit[1] + data[edit[0] :]
    )
    return st.one_of(truncate, flip, insert)


def _apply(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        out[position] = value
    return bytes(out)


def assert_well_formed(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    assert response.headers.get("x-request-id")
    body = response.json()
    if response.status_code == 200:
        assert len(body["results"]) == 1 and len(body["results"][0]["mean"]) == body["latent_dim"]
    else:
        assert response.status_code in (400, 413, 415, 422), response.text
        assert set(body["error"]) == {"code", "message"} and body["error"]["message"]


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_mutated_images_get_a_result_or_a_clear_4xx(http, kind):
    original = image_bytes(kind)
    media_type = FORMATS[kind][1]
    assert http.post("/encode", content=original, headers={"content-type": media_type}).status_code == 200
    seen = []

    @given(data=mutations(original))
    @FUZZ
    def fuzz(data):
        response = http.post("/encode", content=data, headers={"content-type": media_type})
        assert_well_formed(response)
        seen.append(response.status_code)

    fuzz()
    assert any(status != 200 for status in seen)  # the mutations did reach the error paths


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif"])
def test_images_sent_under_another_image_type_are_still_decoded_or_refused_cleanly(http, kind):
    for _, media_type in FORMATS.values():
        assert_well_formed(http.post("/encode", content=image_bytes(kind), headers={"content-type": media_type}))


def header_values(max_codepoint: int, max_size: int) -> st.SearchStrategy[str]:
    """Values an HTTP client can send: no leading or trailing whitespace (h11 refuses those)."""
    return st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=max_codepoint), max_size=max_size).filter(
        lambda value: value == value.strip()
    )


@given(media_type=header_values(126, 80))
@FUZZ
def test_any_content_type_header_gets_a_result_or_a_clear_4xx(http, media_type):
    response = http.post("/encode", content=image_bytes("png"), headers={"content-type": media_type})
    assert_well_formed(response)


@given(request_id=header_values(255, 300))
@FUZZ
def test_any_request_id_is_echoed_only_when_safe(http, request_id):
    response = http.get("/healthz", headers={"x-request-id": request_id.encode("latin-1")})
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    echoed = response.headers["x-request-id"]
    safe = 0 < len(request_id) <= 128 and all(c.isascii() and (c.isalnum() or c in "._:-") for c in request_id)
    assert echoed == request_id if safe else (echoed != request_id and len(echoed) == 32)
