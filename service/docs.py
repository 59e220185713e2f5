"""The API's own documentation: /docs (Swagger UI) and /redoc served from assets installed with the
`fastapi-offline` wheel, so the pages work without internet access; and the OpenAPI document
fitted to the served model, so /decode's example has exactly the model's latent size and
"Try it out" works."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.schemas import REQUEST_MODELS
from service.v2.routes import REQUEST_MODELS as V2_REQUEST_MODELS

ASSETS_URL = "/docs-assets"
# The wheel's static folder holds exactly these: Swagger UI's bundle and CSS, ReDoc, a favicon.
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "redoc.standalone.js",
    "favicon.png",
)


def assets_dir() -> Path:
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the fastapi-offline package (Swagger UI and ReDoc assets) is not installed")
    return Path(spec.origin).parent / "static"


def install(app: FastAPI, latent_dim: Callable[[], int | None]) -> None:
    """Serve /docs and /redoc from local assets (create the app with docs_url=None, redoc_url=None),
    and fit the OpenAPI document to the model once `latent_dim()` knows its size."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        # validatorUrl null: Swagger UI would otherwise send the document to an online validator.
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{ASSETS_URL}/{FAVICON}",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,
        )

    fastapi_generator = app.openapi  # FastAPI's own; it caches the document on the app

    def generic() -> dict[str, Any]:
        document = fastapi_generator()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in (*REQUEST_MODELS, *V2_REQUEST_MODELS):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, nested in schema.pop("$defs", {}).items():  # the models it refers to, beside it
                schemas.setdefault(name, nested)
            schemas.setdefault(model.__name__, schema)
        return document

    fitted: dict[int, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        size = latent_dim()
        if size is None:  # not loaded yet: the document without the model's sizes
            return generic()
        if size not in fitted:
            fitted[size] = fit_to_model(generic(), size)
        return fitted[size]

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def fit_to_model(document: dict[str, Any], latent_dim: int) -> dict[str, Any]:
    """A copy of the document whose latent rows have exactly `latent_dim` numbers, with a /decode
    example that the served model accepts."""
    document = copy.deepcopy(document)
    row = document["components"]["schemas"]["DecodeRequest"]["properties"]["z"]["items"]
    row["minItems"] = row["maxItems"] = latent_dim
    example = {"z": [[0.0] * latent_dim, [1.0] * latent_dim]}
    content = document["paths"]["/decode"]["post"]["requestBody"]["content"]["application/json"]
    content["examples"] = {
        "two_latents": {
            "summary": f"two latents of the model's {latent_dim} dimensions: the "
            "prior's mean, and +1 in every dimension",
            "value": example,
        }
    }
    return document
