"""Response helpers: PNG bytes, base64, and JSON that skips a second validation pass."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response

from model.core.preprocess import array_to_png, make_grid


def png_base64(pixels: np.ndarray) -> str:
    return base64_text(array_to_png(pixels))


def base64_text(data: bytes) -> str:
    """Bytes as the ASCII base64 text JSON carries."""
    return base64.b64encode(data).decode("ascii")


def png_response(pixels: np.ndarray, headers: dict[str, str] | None = None) -> Response:
    return Response(array_to_png(pixels), media_type="image/png", headers=headers)


def grid_response(images: np.ndarray, headers: dict[str, str] | None = None) -> Response:
    return png_response(make_grid(images), headers)


class JsonBytes(Response):
    """A 200 whose body is JSON already serialised: the headers Starlette's Response would make
    (Content-Length, then Content-Type), without its general case's work on every answer."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code, self.background, self.body = 200, None, body
        self.raw_headers = [(b"content-length", str(len(body)).encode("latin-1")), _JSON_TYPE]


_JSON_TYPE = (b"content-type", b"application/json")


class RawResponse(Response):
    """A 200 with these headers, then Content-Length unless they hold one: Starlette's Response(body,
    headers=headers), the same bytes, without its general case's work on every answer."""

    def __init__(self, body: bytes, headers: dict[str, str]) -> None:
        self.status_code, self.background, self.body = 200, None, body
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        if not any(name == b"content-length" for name, _ in raw):
            raw.append((b"content-length", str(len(body)).encode("latin-1")))
        self.raw_headers = raw


def json_response(payload: dict[str, Any]) -> Response:
    """Payloads are built from typed values (numpy arrays included); the response_model on each route
    documents them, and tests/unit/service/test_responses.py checks the bodies against it. The hot
    routes (/encode, the micro-batched encoder) do not build a pydantic model per request: it would
    validate and copy every latent number again, on the route whose cost the benchmark holds to the
    minimal app's (docs/design/serving-measurements.md). orjson writes float32 in its shortest
    round-trip form, and skips the float64 lists whose repr was json.dumps' main cost in
    `python -m bench.inprocess --profile`."""
    return JsonBytes(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
