"""One error layer: every error is JSON {"error": {"code", "message"}} with the right status.

Domain errors are raised as `ApiError`; FastAPI's validation errors and Starlette's HTTP errors
are reshaped. Anything unexpected is logged with its traceback and answered with the generic
INTERNAL_ERROR by the observability middleware, inside which it lands: there the response still
gets its X-Request-ID (Starlette's own 500 handler sits outside every middleware).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("vae.service")
INTERNAL_ERROR = ("internal_error", "internal error; the request id is in the X-Request-ID header")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def is_v2(path: str) -> bool:
    """Paths of the open inference protocol, whose errors are {"error": "<message>"}."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout", 413: "payload_too_large"}
        path = request.url.path if len(request.url.path) <= 200 else request.url.path[:200] + "..."
        allowed = (getattr(exc, "headers", None) or {}).get("Allow")
        message = {
            404: f"no route {path}",
            405: f"{request.method} is not allowed on {path}" + (f"; use {allowed}" if allowed else ""),
            408: str(exc.detail),
            413: str(exc.detail),
        }
        text = message.get(exc.status_code, "request failed")
        if is_v2(request.url.path):  # the open inference protocol's shape, {"error": "<message>"}
            return JSONResponse({"error": text}, status_code=exc.status_code, headers=getattr(exc, "headers", None))
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), text, getattr(exc, "headers", None)
        )
