"""The open inference protocol's errors: `{"error": "<message>"}`, whatever raised them.

The protocol's routes convert their own errors (`protocol_errors`), so the service's own routes keep
`{"error": {"code", "message"}}`. What answers before a route runs (no route matched, a wrong method,
the body's size, upload admission, an unexpected 500) is shaped by the app's error layer, which asks
`error_shape`: the v2 package, not the shared code, knows which paths are its own.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ApiError, ErrorShape, error_response
from service.v2.codec import ProtocolError

PREFIX = "/v2"
Endpoint = Callable[[Request], Awaitable[Response]]


def error_shape(path: str) -> ErrorShape:
    """The shape of a path's errors: the protocol's under /v2, the service's own elsewhere."""
    return ErrorShape.V2 if path == PREFIX or path.startswith(PREFIX + "/") else ErrorShape.NATIVE


def v2_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return error_response(status, "", message, headers, ErrorShape.V2)


def as_v2_error(exc: ProtocolError | ApiError | StarletteHTTPException) -> JSONResponse:
    """An error raised under a protocol route, in the protocol's shape. A 422 of the shared code (bad
    parameters, an image too costly) is the protocol's 400."""
    if isinstance(exc, ProtocolError):
        return v2_error(exc.status, exc.message)
    if isinstance(exc, ApiError):
        return v2_error(400 if exc.status == 422 else exc.status, exc.message, exc.headers)
    return v2_error(exc.status_code, str(exc.detail), exc.headers)  # the body guards' 408 or 413


def protocol_errors(endpoint: Endpoint) -> Endpoint:
    """A protocol route whose errors are answered in the protocol's shape."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (ProtocolError, ApiError, StarletteHTTPException) as exc:
            return as_v2_error(exc)

    return answer
