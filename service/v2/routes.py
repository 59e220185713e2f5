"""The open inference protocol (KServe v2, Triton) over REST: health, server and model metadata,
model readiness, inference. The repository extension is in service/routes/repository.py.

Errors here are `{"error": "<message>"}` as the protocol has them, whatever raised them: each route
converts its own errors (`service/v2/errors.py`).
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.errors import ApiError
from service.repository_scan import version_key
from service.schemas import V2ErrorBody
from service.state import AppState, app_state
from service.uploads import read_body
from service.v2.codec import (
    HEADER_LENGTH,
    InferResponse,
    ProtocolError,
    encode_response,
    header_length,
    listed,
    parse_request,
    quoted,
)
from service.v2.errors import protocol_errors, v2_error
from service.v2.models import MODELS, split_name, v2_names
from service.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ReadyResponse,
    ServerMetadata,
)
from service.v2.spec import Call, V2Model

router = APIRouter(tags=["open inference protocol (v2)"])
EXTENSIONS = ["binary_tensor_data", "model_repository"]
# A body up to this size is parsed on the event loop, where its parse costs less than the hop to a
# thread; a larger one in a worker thread: a large JSON header, or BYTES elements split one by one in Python.
INLINE_PARSE_BYTES = 65_536
REPOSITORY_MODEL_PLATFORM = "vae-service_repository_model"
# The most bytes one element of each kind takes in a JSON response, separator included (orjson writes at
# most 24 characters for a float, 20 for an integer): the response's size is known before it is built.
JSON_ELEMENT_BYTES = {"f": 25, "i": 21, "u": 21, "b": 6}


def resolve(state: AppState, v2_name: str, version: str | None) -> tuple[Any, V2Model]:
    """(the served version, the v2 model) behind a v2 name; 404 or 503 as the native routes answer."""
    found = split_name(v2_name)
    if found is None:
        hint = (
            f"'{v2_name}' is a repository model; infer on its v2 models {', '.join(v2_names(v2_name))}"
            if v2_name in state.registry.served()
            else f"no v2 model {quoted(v2_name)}: v2 models are named <model>.<{'|'.join(MODELS)}> for each model "
            "in GET /v1/models (POST /v2/repository/index lists them)"
        )
        raise ProtocolError(hint, status=404)
    model, kind = found
    return state.resolve(model, version), kind


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
    return ServerMetadata(name=request.app.title, version=request.app.version, extensions=EXTENSIONS)


@protocol_errors
async def model_metadata(request: Request) -> Response:
    state = app_state(request)
    name, version = request.path_params["name"], request.path_params.get("version")
    if split_name(name) is None and name in state.registry.known():
        return JSONResponse(repository_model_metadata(state, name, version))
    served, kind = resolve(state, name, version)
    versions = sorted(state.registry.served().get(served.name, [served.version]), key=version_key)
    return JSONResponse(kind.metadata(name, versions, served))


def repository_model_metadata(state: AppState, name: str, version: str | None) -> dict[str, Any]:
    """A repository model M as the index lists it: it takes no tensors itself; its v2 models do. So
    that a client walking the index gets an answer for every entry (503 while nothing of M serves)."""
    served = state.resolve(name, version)
    return {
        "name": name,
        "versions": state.registry.served().get(name, [served.version]),
        "platform": REPOSITORY_MODEL_PLATFORM,
        "inputs": [],
        "outputs": [],
        "description": f"a repository model: load and unload act on it, inference on its v2 models "
        f"{', '.join(v2_names(name))}",
    }


@protocol_errors
async def infer(request: Request) -> Response:
    state = app_state(request)
    name, version = request.path_params["name"], request.path_params.get("version")
    served, kind = resolve(state, name, version)
    body = await read_body(request, state.settings.max_upload_bytes)
    length = header_length(request.headers.get(HEADER_LENGTH), len(body))
    if len(body) <= INLINE_PARSE_BYTES:
        parsed = parse_request(body, length)
    else:
        parsed = await anyio.to_thread.run_sync(parse_request, body, length)
    known = [spec.name for spec in kind.outputs(served)]
    unknown = [o.name for o in parsed.outputs or () if o.name not in known]
    if unknown:
        raise ProtocolError(f"model '{name}' has no output {listed(unknown)}; its outputs are {', '.join(known)}")
    requested = tuple(o.name for o in parsed.outputs or ())
    call = Call(state, served, {tensor.name: tensor for tensor in parsed.inputs}, parsed.parameters, requested)
    outputs, parameters = await kind.run(call)
    wanted = [o.name for o in parsed.outputs] if parsed.outputs is not None else list(outputs)
    missing = [o for o in wanted if o not in outputs]
    if missing:
        raise ProtocolError(
            f"model '{name}' does not produce {listed(missing)} with these parameters (GET its "
            "metadata: the description says when each output is produced)"
        )
    chosen = [(o, outputs[o], parsed.binary(o)) for o in wanted]
    check_outputs(name, chosen, state.settings.max_response_bytes)
    content, headers = encode_response(InferResponse(name, served.version, parsed.id, chosen, parameters))
    return Response(content, headers=headers)


def check_outputs(name: str, outputs: list[tuple[str, np.ndarray, bool]], max_bytes: int) -> None:
    """Before anything is encoded: every number finite (JSON has no NaN; orjson would write null where
    the schema promises a number), and the response within VAE_MAX_RESPONSE_BYTES."""
    size = 0
    for output, data, binary in outputs:
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise ApiError(
                422,
                "non_finite_output",
                f"model '{name}' computed non-finite values in output "
                f"'{output}': its inputs are outside the range the model works in (for a decoder, "
                "latents far from the prior's; for an encoder graph, pixels outside its input scale)",
            )
        if data.dtype == object:  # BYTES: always binary, each element behind its 4-byte length
            size += sum(len(x) + 4 for x in data.reshape(-1))
        else:
            size += data.size * (data.dtype.itemsize if binary else JSON_ELEMENT_BYTES.get(data.dtype.kind, 25))
    if size > max_bytes:
        raise ApiError(
            422,
            "response_too_large",
            f"the response of '{name}' would be about {size} bytes, over "
            f"the limit of {max_bytes} (VAE_MAX_RESPONSE_BYTES): ask for fewer rows or outputs, or for "
            "binary outputs (parameters.binary_data_output)",
        )


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
