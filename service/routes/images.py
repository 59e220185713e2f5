"""Routes that take images: /encode, /elbo, /reconstruct."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import responses
from service.errors import unprocessable
from service.params import openapi_parameters
from service.routes.addressing import add_model_route
from service.schemas import (
    ElboQuery,
    ElboResponse,
    EncodeQuery,
    EncodeResponse,
    ReconstructQuery,
    ReconstructResponse,
    error_responses,
)
from service.state import model_route

if TYPE_CHECKING:
    from service.served import ServedModel
    from service.state import AppState
from service.uploads import ACCEPTED, IMAGE_TYPES, read_images

router = APIRouter(tags=["images"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
# Any image will do as an example; the model's own sample is one the server always has.
EXAMPLE_IMAGE = {
    "examples": {
        "a_sample": {
            "summary": "a PNG the model generated (GET /sample?n=1&seed=0)",
            "externalValue": "/sample?n=1&seed=0",
        }
    }
}
MEDIA_TYPES = ["image/png", *sorted(IMAGE_TYPES - {"image/png"})]  # the first is Swagger UI's default
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": f"{ACCEPTED}. GIF: the first frame. Every image goes through the model's preprocessing "
        "contract (GET /v1/model).",
        "content": {
            **{
                media_type: {**BINARY, **(EXAMPLE_IMAGE if media_type == "image/png" else {})}
                for media_type in MEDIA_TYPES
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    }
}
IMAGE_ERRORS = error_responses(400, 413, 415, 422, 429, 503)


async def read_model_images(request: Request, state: AppState, served: ServedModel) -> np.ndarray:
    s = state.settings
    return await read_images(request, served.engine.contract, state.decoder, s.max_upload_bytes, s.max_batch)


async def encode(request: Request) -> Response:
    state, served, query = model_route(request, EncodeQuery)
    pixels = await read_model_images(request, state, served)
    mean, logvar, z, lower = await served.encode(pixels, query.sample, query.seed)
    results = [
        {"index": i, "mean": mean[i], "logvar": logvar[i], **({"z": z[i]} if z is not None else {})}
        for i in range(len(pixels))
    ]
    if lower is not None:  # a two-level VAE: q(z1 | x, z2) at each image's z2
        mean1, logvar1, z1 = lower
        for i, result in enumerate(results):
            result["lower"] = {"mean": mean1[i], "logvar": logvar1[i], **({"z": z1[i]} if z1 is not None else {})}
    return responses.json_response(
        {
            "model": served.ref,
            "latent_dim": served.engine.latent_dim,
            "latent_shape": list(served.engine.model.manifest.latent),
            "seed": query.seed if query.sample else None,
            "results": results,
        }
    )


async def elbo(request: Request) -> Response:
    state, served, query = model_route(request, ElboQuery)
    engine = served.engine
    engine.require_likelihood("POST /elbo")
    if query.k > state.settings.max_k:
        raise unprocessable("k_out_of_range", f"k must be between 1 and {state.settings.max_k}, not {query.k}")
    pixels = await read_model_images(request, state, served)
    binarize = engine.default_binarize_seed if query.binarize_seed is None else query.binarize_seed
    scores = await served.run(
        "elbo", len(pixels) * (query.k + 1), engine.score, pixels, query.k, query.seed, binarize, query.estimator
    )
    bpd, ll, ll_bpd = scores.bits_per_dim, scores.log_likelihood, scores.log_likelihood_bits_per_dim
    se, ess = scores.standard_error, scores.effective_sample_size
    results = [
        {
            "index": i,
            "elbo": float(scores.elbo[i]),
            "reconstruction": float(scores.reconstruction[i]),
            "kl": float(scores.kl[i]),
            "bits_per_dim": float(bpd[i]),
            "log_likelihood": None if ll is None else float(ll[i]),
            "log_likelihood_bits_per_dim": None if ll_bpd is None else float(ll_bpd[i]),
            "log_likelihood_standard_error": None if se is None else float(se[i]),
            "effective_sample_size": None if ess is None else float(ess[i]),
        }
        for i in range(len(pixels))
    ]
    return responses.json_response(
        {
            "model": served.ref,
            "k": query.k,
            "seed": query.seed,
            "binarize_seed": binarize,
            "data_space": engine.data_space(binarize),
            "results": results,
            "estimator": scores.estimator,
        }
    )


async def reconstruct(request: Request) -> Response:
    state, served, query = model_route(request, ReconstructQuery)
    pixels = await read_model_images(request, state, served)
    recon = await served.run("reconstruct", len(pixels), served.engine.reconstruct, pixels)
    if query.format == "json":
        return responses.json_response(
            {
                "model": served.ref,
                "images": [{"index": i, "png_base64": responses.png_base64(x)} for i, x in enumerate(recon)],
            }
        )
    if len(recon) == 1:
        return responses.png_response(recon[0], served.headers)
    return responses.grid_response(recon, served.headers)


add_model_route(
    router,
    "POST",
    "/encode",
    encode,
    response_model=EncodeResponse,
    responses=IMAGE_ERRORS,
    openapi_extra={**IMAGE_BODY, **openapi_parameters(EncodeQuery)},
    summary="Images to the posterior q(z|x): mean, log-variance and optionally a sample z",
)
add_model_route(
    router,
    "POST",
    "/elbo",
    elbo,
    response_model=ElboResponse,
    responses=IMAGE_ERRORS,
    openapi_extra={**IMAGE_BODY, **openapi_parameters(ElboQuery)},
    summary="Score images: ELBO, its terms, and with k > 1 an estimate of log p(x) with its standard "
    "error and effective sample size",
)
add_model_route(
    router,
    "POST",
    "/reconstruct",
    reconstruct,
    response_model=ReconstructResponse,
    responses={
        **IMAGE_ERRORS,
        200: {"content": {"image/png": {}}, "description": "PNG (format=png) or JSON (format=json)"},
    },
    openapi_extra={**IMAGE_BODY, **openapi_parameters(ReconstructQuery)},
    summary="Images in, reconstructions E[x | z = mean of q(z|x)] out",
)
