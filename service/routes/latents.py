"""Routes that take latents: /decode and /sample."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import Response

from service import responses
from service.errors import unprocessable
from service.schemas import DecodeRequest, DecodeResponse, SampleResponse, error_responses
from service.state import EngineDep, StateDep

router = APIRouter(tags=["latents"])
PNG = {200: {"content": {"image/png": {}}, "description": "PNG, or JSON with format=json"}}


def _latents(body: DecodeRequest, latent_dim: int, max_batch: int) -> np.ndarray:
    if not 1 <= len(body.z) <= max_batch:
        raise unprocessable("invalid_latents", f"z must have 1 to {max_batch} rows, not {len(body.z)}")
    for i, row in enumerate(body.z):
        if len(row) != latent_dim:
            raise unprocessable("invalid_latents", f"z row {i} has {len(row)} numbers; the model's latent_dim is "
                                f"{latent_dim}")
    z = np.asarray(body.z, dtype=np.float64)
    if np.abs(z).max() > np.finfo(np.float32).max:  # finite in JSON, infinite as float32
        raise unprocessable("invalid_latents", "z values must be within float32 range (|z| < 3.4e38)")
    return z.astype(np.float32)


@router.post("/decode", response_model=DecodeResponse, responses={**PNG, **error_responses(413, 422, 429, 503)},
             summary="Latents to images: E[x|z] as PNGs")
async def decode(body: DecodeRequest, state: StateDep, engine: EngineDep,
                 format: Annotated[Literal["json", "png", "grid"], Query(
                     description="json: base64 PNG per row; png: one PNG (exactly one row); grid: one PNG grid")
                 ] = "json",
                 pixels: Annotated[bool, Query(description="json only: include E[x|z] as numbers")] = False,
                 ) -> Response:
    z = _latents(body, engine.latent_dim, state.settings.max_batch)
    if format == "png" and len(z) != 1:
        raise unprocessable("invalid_format", f"format=png returns one image but z has {len(z)} rows; use "
                            "format=grid or format=json")
    images = await state.run("decode", len(z), engine.decode, z)
    if format == "png":
        return responses.png_response(images[0])
    if format == "grid":
        return responses.grid_response(images)
    return responses.json_response({"model": state.model_ref(), "images": [
        {"index": i, "png_base64": responses.png_base64(x), **({"pixels": x.tolist()} if pixels else {})}
        for i, x in enumerate(images)]})


@router.get("/sample", response_model=SampleResponse, responses={**PNG, **error_responses(422, 429, 503)},
            summary="Draw z ~ N(0, t^2 I) and decode: what the model generates")
async def sample(state: StateDep, engine: EngineDep,
                 n: Annotated[int, Query(ge=1, description="number of samples, 1..VAE_MAX_BATCH")] = 16,
                 seed: Annotated[int | None, Query(ge=0, le=2**63 - 1, description="the same seed gives "
                                 "byte-identical output; omitted: a random seed, returned in X-Seed")] = None,
                 temperature: Annotated[float, Query(gt=0, le=10, description="scale of the prior's standard "
                                        "deviation, 0 < t <= 10")] = 1.0,
                 format: Annotated[Literal["png", "json"], Query(
                     description="png: one grid to look at; json: base64 PNG and latents per sample")] = "png",
                 ) -> Response:
    if n > state.settings.max_batch:
        raise unprocessable("n_out_of_range", f"n must be between 1 and {state.settings.max_batch}, not {n}")
    if not math.isfinite(temperature):
        raise unprocessable("invalid_temperature", "temperature must be a finite number in (0, 10]")
    seed = int(np.random.default_rng().integers(0, 2**31)) if seed is None else seed
    z = engine.prior_latents(n, seed, temperature)
    images = await state.run("sample", n, engine.decode, z)
    if format == "png":
        return responses.grid_response(images, headers={"X-Seed": str(seed)})
    return responses.json_response({"model": state.model_ref(), "seed": seed, "temperature": temperature,
                                    "samples": [{"index": i, "png_base64": responses.png_base64(x),
                                                 "z": z[i].tolist()} for i, x in enumerate(images)]})
