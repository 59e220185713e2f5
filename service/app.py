"""The app factory: settings in, FastAPI app out. The model loads in the background at start-up."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from model.core.artifact import ModelLoadError, OnnxVAE, load_model_dir
from model.core.preprocess import array_to_png, bytes_to_array
from service import docs, errors
from service.batching import MicroBatcher
from service.engine import Engine
from service.observability import Metrics, ObservabilityMiddleware, configure_logging
from service.routes import images, latents, ops
from service.settings import Settings, load_settings, unknown_variables
from service.state import AppState

log = logging.getLogger("vae.service")
Loader = Callable[[Settings], OnnxVAE]


def default_loader(settings: Settings) -> OnnxVAE:
    return load_model_dir(settings.model_dir, threads=settings.intra_op_threads)


def warm_up(engine: Engine) -> None:
    """One pass through every path a request takes, so the first request pays no set-up cost
    (Pillow's lazy plugin loading included)."""
    pixels = np.zeros((1, *engine.model.manifest.input.shape), dtype=np.float32)
    pixels = bytes_to_array(array_to_png(pixels[0]), engine.contract)[None]
    engine.encode(pixels, sample=True, seed=0)
    array_to_png(engine.decode(engine.prior_latents(1, 0, 1.0))[0])
    engine.score(pixels, k=2, seed=0, binarize_seed=0)


async def _load(state: AppState, loader: Loader) -> None:
    try:
        model = await asyncio.to_thread(loader, state.settings)
        engine = Engine.from_model(model)
        await asyncio.to_thread(warm_up, engine)
    except ModelLoadError as exc:
        state.load_failed = True
        log.error("model not served, staying unready: %s", exc)
        return
    except Exception:
        state.load_failed = True
        log.exception("model not served, staying unready: unexpected error while loading %s", state.settings.model_dir)
        return
    manifest = model.manifest
    state.metrics.model_info.labels(manifest.name, manifest.version, str(manifest.latent_dim),
                                    manifest.likelihood.name).set(1)
    if state.settings.micro_batch:
        state.batcher = MicroBatcher(engine.model.encode, max_rows=state.settings.max_batch,
                                     max_wait_s=state.settings.micro_batch_wait_ms / 1000)
    state.engine = engine
    state.metrics.ready.set(1)
    log.info("ready: %s %s from %s (encoder %s, decoder %s)", manifest.name, manifest.version,
             state.settings.model_dir, manifest.encoder.sha256[:12], manifest.decoder.sha256[:12])


def create_app(settings: Settings | None = None, loader: Loader = default_loader) -> FastAPI:
    settings = settings or load_settings()
    state = AppState(settings=settings, metrics=Metrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loading = asyncio.create_task(_load(state, loader))
        yield
        if not state.loading.done():
            state.loading.cancel()
        state.decoder.close()

    app = FastAPI(
        title="vae-service",
        version="0.1.0",
        summary="A variational autoencoder served from ONNX graphs: encode, decode, sample, score, reconstruct.",
        description="Every error is JSON `{\"error\": {\"code\", \"message\"}}`. Every response carries "
                    "X-Request-ID. Image routes take a raw image/* body or multipart parts named `file`.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by service/docs.py
        redoc_url=None,
    )
    app.state.vae = state
    errors.install(app)
    docs.install(app, lambda: state.engine.latent_dim if state.engine is not None else None)
    routers = (images.router, latents.router, ops.router)
    for router in routers:
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "X-Seed"])
    paths = {route.path for router in routers for route in router.routes} | {"/docs", "/openapi.json"}
    app.add_middleware(ObservabilityMiddleware, state=state, routes=paths, max_body=settings.max_upload_bytes,
                       max_uploads=settings.max_uploads, body_timeout_s=settings.body_timeout_s,
                       access_log=settings.access_log)
    return app


def app_factory() -> FastAPI:
    """Entry point for uvicorn (`--factory`): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    return create_app(settings)
