"""POST /preprocess: the images as the model sees them, after the preprocessing contract (grey,
alpha composited, resized, scaled). No model call; it shows what /encode and /elbo are given."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import responses
from service.params import openapi_parameters
from service.routes.addressing import add_model_route
from service.routes.images import IMAGE_BODY, IMAGE_ERRORS, read_model_images
from service.schemas import ReconstructQuery, ReconstructResponse
from service.state import model_route

router = APIRouter(tags=["images"])


async def preprocess(request: Request) -> Response:
    state, served, query = model_route(request, ReconstructQuery)
    pixels = await read_model_images(request, state, served)
    if query.format == "json":
        return responses.json_response(
            {
                "model": served.ref,
                "images": [{"index": i, "png_base64": responses.png_base64(x)} for i, x in enumerate(pixels)],
            }
        )
    if len(pixels) == 1:
        return responses.png_response(pixels[0], served.headers)
    return responses.grid_response(pixels, served.headers)


add_model_route(
    router,
    "POST",
    "/preprocess",
    preprocess,
    response_model=ReconstructResponse,
    responses={
        **IMAGE_ERRORS,
        200: {"content": {"image/png": {}}, "description": "PNG (format=png) or JSON (format=json)"},
    },
    openapi_extra={**IMAGE_BODY, **openapi_parameters(ReconstructQuery)},
    summary="Images in, the model's input out: each image after the preprocessing contract",
)
