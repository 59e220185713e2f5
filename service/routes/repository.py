"""Triton's model-repository extension: index, load, unload; and per-model readiness.

A repository model M is served as the v2 models M.encoder, M.decoder, M.encode, ... (service/v2/models.py):
the index lists them beside M, with M's versions and states; load and unload of a v2 name act on M.

These routes change what is served, so they need `Authorization: Bearer <VAE_ADMIN_TOKEN>` when
that setting is present; without it they are off (403) unless `VAE_REPOSITORY_CONTROL=open`.
Errors here are `{"error": "<message>"}`, the open inference protocol's shape, which Triton's
clients parse.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.errors import ApiError
from service.schemas import V2ErrorBody
from service.state import app_state
from service.uploads import read_body
from service.v2 import protocol
from service.v2.codec import ProtocolError, check_structure
from service.v2.errors import as_v2_error, v2_error
from service.v2.schemas import ModelReadyResponse

router = APIRouter(tags=["model repository"])
# Path parameters read from request.path_params and documented here: declared in the signature, FastAPI
# would document a 422 body these routes never send.
NAME = {
    "parameters": [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "model name: a directory of the repository",
        }
    ]
}
VERSION = {
    "parameters": [
        *NAME["parameters"],
        {
            "name": "version",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "model version: a directory of the model's",
        },
    ]
}
V2_ERROR = {"model": V2ErrorBody}
CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {**V2_ERROR, "description": "the load failed; what still serves is named"},
    401: {**V2_ERROR, "description": "missing or wrong bearer token"},
    403: {**V2_ERROR, "description": "repository control is off (no VAE_ADMIN_TOKEN)"},
    404: {**V2_ERROR, "description": "no such model"},
}
INDEX_EXAMPLE = [{"name": "fashion-mnist-vae", "version": "2.0.0", "state": "READY", "reason": ""}]


CONTROL_BODY_BYTES = 65_536  # a control body is {"ready": true} or {"parameters": {...}}: bytes, not megabytes
CONTROL_STRUCTURES = 1_000  # lists, objects and keys: a handful in any real control body
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vae-service model repository"'}  # RFC 9110: a 401 names its scheme


def _denied(request: Request) -> JSONResponse | None:
    """None when the caller may change the repository, else the answer to send."""
    try:
        protocol.authorize(app_state(request), request.headers.get("authorization"))
    except ProtocolError as exc:
        return v2_error(exc.status, exc.message, CHALLENGE if exc.status == 401 else None)
    return None


async def _control_request(request: Request) -> dict[str, Any] | JSONResponse:
    """What every control route starts with: the token check (before the body is read), then the
    optional JSON body: absent, or an object. A response means: answer with it."""
    denied = _denied(request)
    if denied is not None:
        return denied
    try:
        body = await read_body(request, CONTROL_BODY_BYTES, setting="the control routes' own limit")
        check_structure(body, "the body", most=CONTROL_STRUCTURES)
    except (ApiError, ProtocolError) as exc:  # the body's size (413) or its structure (400)
        return as_v2_error(exc)
    if not body.strip():
        return {}
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return v2_error(400, "the body is not JSON")
    if not isinstance(parsed, dict):
        return v2_error(400, "the body must be a JSON object")
    return parsed


@router.post(
    "/v2/repository/index",
    responses={
        **CONTROL_ERRORS,
        200: {"description": "every model and version", "content": {"application/json": {"example": INDEX_EXAMPLE}}},
    },
    summary="Every model and version in the repository, with its state and reason",
)
async def repository_index(request: Request) -> Response:
    body = await _control_request(request)
    if isinstance(body, JSONResponse):
        return body
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        return v2_error(400, "'ready' must be true or false")
    return JSONResponse(await protocol.repository_index(app_state(request), ready))


@router.post(
    "/v2/repository/models/{name}/load",
    responses=CONTROL_ERRORS,
    openapi_extra=NAME,
    summary="Load or reload a model's versions from disk; a failed load never replaces a working one",
)
async def repository_load(request: Request) -> Response:
    body = await _control_request(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        await protocol.load(app_state(request), request.path_params["name"])
    except ProtocolError as exc:
        return as_v2_error(exc)
    return JSONResponse({})


@router.post(
    "/v2/repository/models/{name}/unload",
    responses=CONTROL_ERRORS,
    openapi_extra=NAME,
    summary="Stop serving a model; requests already running finish on it",
)
async def repository_unload(request: Request) -> Response:
    body = await _control_request(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        await protocol.unload(app_state(request), request.path_params["name"])
    except ProtocolError as exc:
        return as_v2_error(exc)
    return JSONResponse({})


READY: dict[int | str, dict[str, Any]] = {
    200: {"model": ModelReadyResponse, "description": "ready"},
    400: {**V2_ERROR, "description": "not ready"},
    404: {**V2_ERROR, "description": "no such model"},
}


@router.get(
    "/v2/models/{name}/ready",
    responses=READY,
    openapi_extra=NAME,
    summary="Per-model readiness: 200 when a version of the model (or of a v2 model's) is loaded and warmed up",
)
async def model_ready(request: Request) -> Response:
    return _readiness(request, request.path_params["name"], None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    responses=READY,
    openapi_extra=VERSION,
    summary="Per-version readiness",
)
async def version_ready(request: Request) -> Response:
    return _readiness(request, request.path_params["name"], request.path_params["version"])


def _readiness(request: Request, name: str, version: str | None) -> Response:
    try:
        protocol.model_ready(app_state(request), name, version)
    except ProtocolError as exc:
        return as_v2_error(exc)
    return JSONResponse(ModelReadyResponse(name=name, ready=True).model_dump())
