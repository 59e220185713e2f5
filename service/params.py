"""Query parameters as one pydantic model per route: one validation per request, documented in
OpenAPI from the same model. FastAPI validates each declared parameter separately, a pass per
parameter on every request (`python -m bench.inprocess --profile` shows where /encode's time goes)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from service.errors import ApiError

Q = TypeVar("Q", bound=BaseModel)


class QueryModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


_DEFAULTS: dict[type[BaseModel], BaseModel] = {}


def parse_query(request: Request, model: type[Q]) -> Q:
    raw = request.scope["query_string"]
    if not raw:  # the defaults: one frozen instance per model, unless a default is made per request
        defaults = _DEFAULTS.get(model)
        if defaults is None:
            defaults = model.model_validate({})
            if not any(field.default_factory for field in model.model_fields.values()):
                _DEFAULTS[model] = defaults
        return defaults  # type: ignore[return-value]  # keyed by its own class
    given = dict(request.query_params)
    unknown = [name for name in given if name not in model.model_fields]
    if unknown:  # a misspelt knob (?kk=10) would otherwise be answered with its default, silently
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        accepted = ", ".join(model.model_fields) or "none"
        raise ApiError(
            422,
            "unknown_parameter",
            f"unknown query parameter {shown} on {request.url.path[:200]}; the parameters accepted are: {accepted}",
        )
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in err['loc']) or 'query'}: {err['msg']}" for err in exc.errors()[:5]]
        raise ApiError(422, "invalid_request", "; ".join(parts)) from None


def openapi_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` entry describing the model's fields as query parameters."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, prop in schema["properties"].items():
        field_schema = {k: v for k, v in prop.items() if k not in ("description", "title")}
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": prop.get("description", ""),
                "schema": field_schema,
            }
        )
    return {"parameters": parameters}
