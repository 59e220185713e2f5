"""Triton's model-repository extension: index, load, unload; and per-model readiness.

A repository model M is served as the v2 models M.encoder, M.decoder, M.encode, ... (service/v2/models.py):
the index lists them beside M, with M's versions and states; load and unload of a v2 name act on M.

These routes change what is served, so they need `Authorization: Bearer <VAE_ADMIN_TOKEN>` when
that setting is present; without it they are off (403) unless `VAE_REPOSITORY_CONTROL=open`.
Errors here are `{"error": "<message>"}`, the open inference protocol's shape, which Triton's
clients parse.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.errors import ApiError
from service.registry import LoadFailed, ModelNotFound
from service.schemas import V2ErrorBody
from service.state import app_state
from service.uploads import read_body
from service.v2.codec import ProtocolError, check_structure, quoted
from service.v2.errors import as_v2_error, v2_error
from service.v2.models import split_name, v2_names
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
    settings = app_state(request).settings
    token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    if token is None:
        if settings.repository_control == "open":
            return None
        return v2_error(403, "repository control is off: set VAE_ADMIN_TOKEN (or VAE_REPOSITORY_CONTROL=open)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return v2_error(401, "repository control needs the header Authorization: Bearer <VAE_ADMIN_TOKEN>", CHALLENGE)
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
    return JSONResponse(with_v2_models(await app_state(request).registry.index(ready_only=ready)))


def with_v2_models(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Each repository model's rows, then the same rows for each of its v2 models."""
    return [entry for row in rows for entry in (row, *({**row, "name": name} for name in v2_names(row["name"])))]


def repository_model(name: str) -> str:
    """The repository model behind a name: M itself, or M for a v2 model M.<kind>."""
    found = split_name(name)
    return found[0] if found is not None else name


@router.post(
    "/v2/repository/models/{name}/load",
    responses=CONTROL_ERRORS,
    openapi_extra=NAME,
    summary="Load or reload a model's versions from disk; a failed load never replaces a working one",
)
async def repository_load(request: Request) -> Response:
    name = repository_model(request.path_params["name"])
    body = await _control_request(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        await app_state(request).registry.load(name)
    except ModelNotFound as exc:
        return v2_error(400, f"failed to load '{name}': {exc}")
    except LoadFailed as exc:
        return v2_error(400, str(exc))
    return JSONResponse({})


@router.post(
    "/v2/repository/models/{name}/unload",
    responses=CONTROL_ERRORS,
    openapi_extra=NAME,
    summary="Stop serving a model; requests already running finish on it",
)
async def repository_unload(request: Request) -> Response:
    name = repository_model(request.path_params["name"])
    body = await _control_request(request)
    if isinstance(body, JSONResponse):
        return body
    try:
        await app_state(request).registry.unload(name)
    except ModelNotFound as exc:
        return v2_error(400, f"failed to unload '{name}': {exc}")
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
    registry = app_state(request).registry
    model = repository_model(name)
    if registry.is_ready(model, version):
        return JSONResponse(ModelReadyResponse(name=name, ready=True).model_dump())
    which = f"model {quoted(name)}" + (f" version {quoted(version)}" if version else "")
    if model not in registry.known():
        return v2_error(
            404,
            f"{which} does not exist: no such model was found in the repository (POST "
            "/v2/repository/index lists them; POST /v2/repository/models/<name>/load loads one added "
            "since)",
        )
    if version is not None and registry.is_ready(model):
        return v2_error(
            400,
            f"{which} is not ready: that version is not loaded (loaded: {', '.join(registry.served().get(model, []))})",
        )
    return v2_error(400, f"{which} is not ready ({'unloaded' if registry.unloaded(model) else 'not loaded'})")
