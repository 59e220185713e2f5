"""One URL scheme for every model operation, consistent with the open inference protocol's
`/v2/models/{name}[/versions/{version}]`:

    /{op}                                      the default model (VAE_DEFAULT_MODEL), its default version
    /v1/models/{name}/{op}                     that model's default version (its highest loaded)
    /v1/models/{name}/versions/{version}/{op}  exactly that version

A route module defines each operation once and registers it here; `state.model_route` reads
{name} and {version} from the matched path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from service.schemas import error_responses

NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "model name, as in GET /v1/models",
}
VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "model version, as in GET /v1/models",
}
PREFIXES = (("", ()), ("/v1/models/{name}", (NAME,)), ("/v1/models/{name}/versions/{version}", (NAME, VERSION)))


def model_paths(suffix: str) -> list[tuple[str, tuple[dict[str, Any], ...]]]:
    """(path, its path parameters) for the default model, a named model, and a named version."""
    return [(prefix + suffix, params) for prefix, params in PREFIXES]


def add_model_route(
    router: APIRouter,
    method: str,
    suffix: str,
    endpoint: Callable[..., Any],
    *,
    openapi_extra: dict[str, Any] | None = None,
    responses: dict[int | str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Register `endpoint` at the three addresses; the named ones also answer 404 model_not_found."""
    for path, params in model_paths(suffix):
        extra = dict(openapi_extra or {})
        extra["parameters"] = [*params, *extra.get("parameters", [])]
        codes = {**(responses or {}), **(error_responses(404) if params else {})}
        router.add_api_route(path, endpoint, methods=[method], openapi_extra=extra, responses=codes, **kwargs)
