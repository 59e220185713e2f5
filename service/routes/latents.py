"""Routes that take latents: /decode and /sample."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import responses
from service.errors import ApiError, unprocessable
from service.params import openapi_parameters
from service.routes.addressing import add_model_route
from service.schemas import DecodeQuery, DecodeResponse, SampleQuery, SampleResponse, error_responses
from service.state import model_route
from service.uploads import read_body
from service.v2.codec import ProtocolError, check_structure

router = APIRouter(tags=["latents"])
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "PNG, or JSON with format=json"}
}
JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DecodeRequest"}}},
    }
}  # the schema is in REQUEST_MODELS
JSON_TYPES = {"", "application/json"}
EXPECTED = '{"z": [[z_1, ..., z_D], ...]}, one row of latent_dim numbers per image (GET /v1/model gives latent_dim)'


async def _decode_request(request: Request, max_bytes: int, max_rows: int) -> list[Any]:
    """The body's rows of z, read under their own small limit. The structure is counted before the
    parse (pydantic validating a body of nested empty lists spends its time on one error per list,
    all on the event loop), then parsed by orjson and checked by hand, with a message that shows
    the shape expected."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        raise ApiError(
            415, "unsupported_media_type", f"Content-Type {media_type[:80]} is not accepted; send application/json"
        )
    body = await read_body(request, max_bytes, setting="VAE_MAX_JSON_BYTES")
    try:  # {"z": [...]} holds one object, one key and a list; each row is one more list
        check_structure(body, "the body", most=max_rows + 8)
        parsed = orjson.loads(body)
    except ProtocolError:
        raise unprocessable(
            "invalid_latents", f"z must be a list of 1 to {max_rows} rows, each a list of numbers: {EXPECTED}"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise ApiError(422, "invalid_request", f"the body is not JSON ({str(exc)[:120]}); send {EXPECTED}") from None
    if not isinstance(parsed, dict) or set(parsed) != {"z"}:
        keys = (
            f"the keys {', '.join(repr(k[:40]) for k in list(parsed)[:5])}"
            if isinstance(parsed, dict)
            else f"a JSON {type(parsed).__name__}"
        )
        raise unprocessable(
            "invalid_latents", f"the body must be an object with the one key 'z', not {keys}: {EXPECTED}"
        )
    z = parsed["z"]
    if not isinstance(z, list) or not z or not all(isinstance(row, list) for row in z):
        raise unprocessable(
            "invalid_latents",
            f"z must be a list of rows, each a list of numbers (a single latent is one row): {EXPECTED}",
        )
    return z


def _latents(rows: list[Any], latent_dim: int, max_batch: int) -> np.ndarray:
    if not 1 <= len(rows) <= max_batch:
        raise unprocessable("invalid_latents", f"z must have 1 to {max_batch} rows, not {len(rows)}")
    for i, row in enumerate(rows):
        if len(row) != latent_dim:
            raise unprocessable(
                "invalid_latents", f"z row {i} has {len(row)} numbers; the model's latent_dim is {latent_dim}"
            )
        for j, value in enumerate(row):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise unprocessable(
                    "invalid_latents",
                    f"z row {i}, element {j} is {str(value)[:40]!r}; every element must be a finite number",
                )
    z = np.asarray(rows, dtype=np.float64)
    if np.abs(z).max() > np.finfo(np.float32).max:  # finite in JSON, infinite as float32
        raise unprocessable("invalid_latents", "z values must be within float32 range (|z| < 3.4e38)")
    return z.astype(np.float32)


async def decode(request: Request) -> Response:
    state, served, query = model_route(request, DecodeQuery)
    engine = served.engine
    rows = await _decode_request(request, state.settings.max_json_bytes, state.settings.max_batch)
    z = _latents(rows, engine.latent_dim, state.settings.max_batch)
    if query.format == "png" and len(z) != 1:
        raise unprocessable(
            "invalid_format", f"format=png returns one image but z has {len(z)} rows; use format=grid or format=json"
        )
    images = await served.run("decode", len(z), engine.decode, z)
    if query.format == "png":
        return responses.png_response(images[0], served.headers)
    if query.format == "grid":
        return responses.grid_response(images, served.headers)
    return responses.json_response(
        {
            "model": served.ref,
            "images": [
                {"index": i, "png_base64": responses.png_base64(x), **({"pixels": x.tolist()} if query.pixels else {})}
                for i, x in enumerate(images)
            ],
        }
    )


async def sample(request: Request) -> Response:
    state, served, query = model_route(request, SampleQuery)
    engine = served.engine
    if query.n > state.settings.max_batch:
        raise unprocessable("n_out_of_range", f"n must be between 1 and {state.settings.max_batch}, not {query.n}")
    seed = int(np.random.default_rng().integers(0, 2**31)) if query.seed is None else query.seed
    z = engine.prior_latents(query.n, seed, query.temperature)
    images = await served.run("sample", query.n, engine.decode, z)
    if query.format == "png":
        return responses.grid_response(images, headers={"X-Seed": str(seed), **served.headers})
    return responses.json_response(
        {
            "model": served.ref,
            "seed": seed,
            "temperature": query.temperature,
            "samples": [
                {"index": i, "png_base64": responses.png_base64(x), "z": z[i].tolist()} for i, x in enumerate(images)
            ],
        }
    )


add_model_route(
    router,
    "POST",
    "/decode",
    decode,
    response_model=DecodeResponse,
    responses={**PNG, **error_responses(413, 415, 422, 429, 503)},
    openapi_extra={**JSON_BODY, **openapi_parameters(DecodeQuery)},
    summary="Latents to images: E[x|z] as PNGs",
)
add_model_route(
    router,
    "GET",
    "/sample",
    sample,
    response_model=SampleResponse,
    responses={**PNG, **error_responses(422, 429, 503)},
    openapi_extra=openapi_parameters(SampleQuery),
    summary="Draw z from the model's prior (temperature t scales its standard deviation) and decode: what "
    "the model generates",
)
