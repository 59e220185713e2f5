"""Routes that take images: /encode, /elbo, /reconstruct."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service import responses
from service.errors import unprocessable
from service.schemas import ElboResponse, EncodeResponse, ReconstructResponse, error_responses
from service.state import EngineDep, StateDep
from service.uploads import read_images

router = APIRouter(tags=["images"])

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "one image as a raw body (PNG, JPEG, WebP, BMP, GIF: first frame, TIFF), or "
                       "multipart/form-data with one or more parts named `file`",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        },
    }
}
IMAGE_ERRORS = error_responses(400, 413, 415, 422, 429, 503)
Seed = Annotated[int, Query(ge=0, le=2**63 - 1, description="seed of the noise; the same seed gives the same numbers")]


async def _images(request: Request, state: StateDep, engine: EngineDep):
    s = state.settings
    return await read_images(request, engine.contract, s.max_upload_bytes, s.max_image_pixels, s.max_batch)


@router.post("/encode", response_model=EncodeResponse, responses=IMAGE_ERRORS, openapi_extra=IMAGE_BODY,
             summary="Images to the posterior q(z|x): mean, log-variance and optionally a sample z")
async def encode(request: Request, state: StateDep, engine: EngineDep,
                 sample: Annotated[bool, Query(description="also return z = mean + sigma * eps")] = False,
                 seed: Seed = 0) -> Response:
    pixels = await _images(request, state, engine)
    mean, logvar, z = await state.run("encode", len(pixels), engine.encode, pixels, sample, seed)
    results = [{"index": i, "mean": mean[i].tolist(), "logvar": logvar[i].tolist(),
                **({"z": z[i].tolist()} if z is not None else {})} for i in range(len(pixels))]
    return responses.json_response({"model": state.model_ref(), "latent_dim": engine.latent_dim,
                                    "seed": seed if sample else None, "results": results})


@router.post("/elbo", response_model=ElboResponse, responses=IMAGE_ERRORS, openapi_extra=IMAGE_BODY,
             summary="Score images: ELBO, its terms, and with k > 1 the IWAE log-likelihood")
async def elbo(request: Request, state: StateDep, engine: EngineDep,
               k: Annotated[int, Query(ge=1, description="importance samples (1..VAE_MAX_K); k > 1 adds the "
                                       "IWAE estimate of log p(x)")] = 1,
               seed: Seed = 0,
               binarize_seed: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="seed of the "
                                        "binarisation (default: the model's test-set seed, as vae-eval)")] = None,
               ) -> Response:
    if k > state.settings.max_k:
        raise unprocessable("k_out_of_range", f"k must be between 1 and {state.settings.max_k}, not {k}")
    pixels = await _images(request, state, engine)
    binarize = engine.default_binarize_seed if binarize_seed is None else binarize_seed
    scores = await state.run("elbo", len(pixels) * (k + 1), engine.score, pixels, k, seed, binarize)
    bpd, ll, ll_bpd = scores.bits_per_dim, scores.log_likelihood, scores.log_likelihood_bits_per_dim
    results = [{"index": i, "elbo": float(scores.elbo[i]), "reconstruction": float(scores.reconstruction[i]),
                "kl": float(scores.kl[i]), "bits_per_dim": float(bpd[i]),
                "log_likelihood": None if ll is None else float(ll[i]),
                "log_likelihood_bits_per_dim": None if ll_bpd is None else float(ll_bpd[i])}
               for i in range(len(pixels))]
    return responses.json_response({"model": state.model_ref(), "k": k, "seed": seed, "binarize_seed": binarize,
                                    "data_space": engine.data_space(binarize), "results": results})


@router.post("/reconstruct", response_model=ReconstructResponse, responses={
    **IMAGE_ERRORS, 200: {"content": {"image/png": {}}, "description": "PNG (format=png) or JSON (format=json)"}},
    openapi_extra=IMAGE_BODY, summary="Images in, reconstructions E[x | z = mean of q(z|x)] out")
async def reconstruct(request: Request, state: StateDep, engine: EngineDep,
                      format: Annotated[Literal["png", "json"], Query(
                          description="png: one PNG (a grid when several images were sent); json: one base64 "
                                      "PNG per image")] = "png") -> Response:
    pixels = await _images(request, state, engine)
    recon = await state.run("reconstruct", len(pixels), engine.reconstruct, pixels)
    if format == "json":
        return responses.json_response({"model": state.model_ref(), "images": [
            {"index": i, "png_base64": responses.png_base64(x)} for i, x in enumerate(recon)]})
    return responses.png_response(recon[0]) if len(recon) == 1 else responses.grid_response(recon)
