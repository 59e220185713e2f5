"""The open inference protocol (KServe v2, Triton) over REST: health, server and model metadata,
model readiness, inference. The repository extension is in service/routes/repository.py.

Errors here are `{"error": "<message>"}` as the protocol has them, whatever raised them: each route
converts its own errors (`service/v2/errors.py`).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.responses import RawResponse
from service.schemas import V2ErrorBody
from service.state import app_state
from service.uploads import read_body
from service.v2 import protocol
from service.v2.codec import HEADER_LENGTH, encode_response, header_length, parse_request
from service.v2.errors import protocol_errors, v2_error
from service.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelStatisticsResponse,
    ReadyResponse,
    ServerMetadata,
)

router = APIRouter(tags=["open inference protocol (v2)"])


def _paths(suffix: str) -> list[tuple[str, dict[str, Any]]]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "a v2 model: <model>.<encoder|decoder|encode|elbo|reconstruct|decode|sample>",
    }
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "a version being served",
    }
    return [
        (f"/v2/models/{{name}}{suffix}", {"parameters": [name]}),
        (f"/v2/models/{{name}}/versions/{{version}}{suffix}", {"parameters": [name, version]}),
    ]


def _errors(*statuses: int) -> dict[int | str, Any]:
    meaning = {
        400: "a malformed request, tensor or parameter",
        404: "no such v2 model or version",
        408: "the body did not arrive in time",
        413: "a body or image over its limit",
        429: "too many model calls in flight; retry",
        503: "the model is loading or failed to load",
    }
    return {status: {"model": V2ErrorBody, "description": meaning[status]} for status in statuses}


async def live() -> LiveResponse:
    return LiveResponse(live=True)


async def ready(request: Request) -> Response:
    state = app_state(request)
    if not state.ready:
        return v2_error(503, state.not_ready_message(), {"Retry-After": "1"})
    return JSONResponse(ReadyResponse(ready=True).model_dump())


async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name=request.app.title, version=request.app.version, extensions=protocol.EXTENSIONS)


@protocol_errors
async def model_metadata(request: Request) -> Response:
    params = request.path_params
    return JSONResponse(protocol.model_metadata(app_state(request), params["name"], params.get("version")))


@protocol_errors
async def infer(request: Request) -> Response:
    state = app_state(request)
    name, version = request.path_params["name"], request.path_params.get("version")
    resolved = protocol.resolve(state, name, version)  # before the body: 404 or 503 without reading it
    body = await read_body(request, state.settings.max_upload_bytes)
    began = time.perf_counter_ns()
    length = header_length(request.headers.get(HEADER_LENGTH), len(body))
    rows = state.settings.max_batch
    if len(body) <= protocol.INLINE_PARSE_BYTES:
        parsed = parse_request(body, length, None, rows)
    else:
        parsed = await anyio.to_thread.run_sync(parse_request, body, length, None, rows)
    content, headers = await protocol.infer(state, name, resolved, parsed, began, True, encode_response)
    return RawResponse(content, headers)


@protocol_errors
async def model_statistics(request: Request) -> Response:
    params = request.path_params
    return JSONResponse(protocol.model_statistics(app_state(request), params.get("name"), params.get("version")))


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor data: the JSON request (its length in "
                "Inference-Header-Content-Length), then the tensors' bytes",
            },
        },
    }
}
INFER_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the outputs; with binary outputs the body is the JSON response (its length "
        "in Inference-Header-Content-Length) followed by their bytes",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
# Referenced from openapi_extra; service/docs.py adds them to the document.
REQUEST_MODELS: tuple[type[BaseModel], ...] = (InferenceRequest, InferenceResponse)

# Inference first: Starlette tries the routes in order, and each miss costs a regular-expression match.
for _path, _params in _paths("/infer"):
    router.add_api_route(
        _path,
        infer,
        methods=["POST"],
        response_class=Response,
        responses={**INFER_OK, **_errors(400, 404, 408, 413, 429, 503)},
        openapi_extra={**_params, **INFER_BODY},
        summary="Inference, JSON or binary tensors",
    )
router.add_api_route(
    "/v2/health/live", live, methods=["GET"], response_model=LiveResponse, summary="Liveness: the process answers"
)
router.add_api_route(
    "/v2/health/ready",
    ready,
    methods=["GET"],
    response_model=ReadyResponse,
    responses=_errors(503),
    summary="Readiness: the default model (VAE_DEFAULT_MODEL) serves",
)
router.add_api_route(
    "/v2",
    server_metadata,
    methods=["GET"],
    response_model=ServerMetadata,
    summary="Server metadata: name, version, extensions",
)
# Before the metadata routes: /v2/models/{name} would take "stats" for a model's name.
router.add_api_route(
    "/v2/models/stats",
    model_statistics,
    methods=["GET"],
    response_model=ModelStatisticsResponse,
    responses=_errors(400, 503),
    summary="Triton's statistics extension: every v2 model version's counts and cumulative times",
)
for _path, _params in _paths("/stats"):
    router.add_api_route(
        _path,
        model_statistics,
        methods=["GET"],
        response_model=ModelStatisticsResponse,
        responses=_errors(404, 503),
        openapi_extra=_params,
        summary="A v2 model's statistics (each version served, or the one named); for a repository model, "
        "its v2 models'",
    )
for _path, _params in _paths(""):
    router.add_api_route(
        _path,
        model_metadata,
        methods=["GET"],
        response_model=ModelMetadata,
        responses=_errors(404, 503),
        openapi_extra=_params,
        summary="A v2 model's metadata: its tensors, platform and parameters",
    )
