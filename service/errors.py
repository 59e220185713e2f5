"""One error layer: every error body is built by `error_body`, in the shape of the API it answers.

The service's own routes answer `{"error": {"code", "message"}}`; the open inference protocol
(`service/v2/`) answers `{"error": "<message>"}`, which its clients parse. Which shape a path gets is
decided by a `ShapeResolver` that the app is given (the v2 package owns the one that knows its
prefix, `service.v2.errors.error_shape`): the shared code never looks at a path itself.

Domain errors are raised as `ApiError`; FastAPI's validation errors and Starlette's HTTP errors are
reshaped here. Anything unexpected is logged with its traceback and answered with the generic
INTERNAL_ERROR by the observability middleware, inside which it lands: there the response still
gets its X-Request-ID (Starlette's own 500 handler sits outside every middleware).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

log = logging.getLogger("vae.service")
INTERNAL_ERROR = ("internal_error", "internal error; the request id is in the X-Request-ID header")
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large"}


class ErrorShape(enum.Enum):
    """The two ways an error body is written."""

    NATIVE = "native"  # {"error": {"code": ..., "message": ...}}
    V2 = "v2"  # {"error": "<message>"}: the open inference protocol's


ShapeResolver = Callable[[str], ErrorShape]  # request path -> the shape its errors take


def native_shape(path: str) -> ErrorShape:
    """The resolver of an app that serves no other protocol."""
    return ErrorShape.NATIVE


def error_body(code: str, message: str, shape: ErrorShape = ErrorShape.NATIVE) -> dict[str, Any]:
    """The one place an error body is built; the protocol's shape has no code."""
    if shape is ErrorShape.V2:
        return {"error": message}
    return {"error": {"code": code, "message": message}}


def error_bytes(code: str, message: str, shape: ErrorShape = ErrorShape.NATIVE) -> bytes:
    """The body as bytes, for the layers below the framework (the middleware and the HTTP protocol)."""
    return json.dumps(error_body(code, message, shape)).encode()


async def send_error(send: Send, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    """An error body answered straight over ASGI, for what is refused or fails outside any route."""
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    shape: ErrorShape = ErrorShape.NATIVE,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, shape), status_code=status, headers=headers)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def unprocessable(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def describe_validation(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line for a person: where, and what was wrong (first five)."""
    parts = []
    for err in list(errors)[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def http_error_message(request: Request, exc: StarletteHTTPException) -> str:
    """What Starlette's own errors (no route, wrong method, the body guards' 408 and 413) say."""
    path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
    if exc.status_code == 404:
        return f"no route {path}"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")
        return f"{request.method} is not allowed on {path}" + (f"; use {allowed}" if allowed else "")
    if exc.status_code in (408, 413):
        return str(exc.detail)
    return "request failed"


def install(app: FastAPI, shape_of: ShapeResolver = native_shape) -> None:
    """The app's handlers for the errors that escape a route; `shape_of` picks each path's body shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        message = http_error_message(request, exc)
        return error_response(exc.status_code, code, message, exc.headers, shape_of(request.url.path))
