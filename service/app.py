"""The app factory: settings in, FastAPI app out. The model loads in the background at start-up."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from model.core.artifact import load_model_dir
from model.core.preprocess import array_to_png, bytes_to_array
from service import docs, errors, tracing
from service.engine import Engine
from service.grpc_server import server as grpc_server
from service.hot_routes import HotRoutes, HotTable, ShortWay
from service.http_tracing import HttpTracingMiddleware
from service.limits import RequestLimitsMiddleware, UploadSlots
from service.memory import settle_garbage_collector
from service.observability import Answers, Metrics, ObservabilityMiddleware, configure_logging
from service.registry import Registry
from service.repository_scan import ModelSource, scan_repository, single_model
from service.routes import anomaly, images, latents, ops, preprocess, remote, repository, ui
from service.served import ServedModel
from service.settings import (
    BUNDLED_DEFAULT_MODEL,
    BUNDLED_REPOSITORY,
    GRACEFUL_SHUTDOWN_S,
    Settings,
    load_settings,
    unknown_variables,
)
from service.state import AppState
from service.v2 import errors as v2_errors
from service.v2 import routes as v2_routes

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("vae.service")
EngineLoader = Callable[[Path, Settings], Engine]
ROUTERS = (
    images.router,
    preprocess.router,
    anomaly.router,
    latents.router,
    ops.router,
    repository.router,
    remote.router,
    v2_routes.router,
)

# The endpoints taken the short way (service/hot_routes.py): /encode at each address, and v2 inference.
HOT_ENDPOINTS = (images.encode, v2_routes.infer)


class ServiceApp(FastAPI):
    """The FastAPI app, with the hot routes' short way in front of its middleware (service/hot_routes.py)."""

    short_way: ShortWay | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        short_way = self.short_way
        if short_way is not None and scope["type"] == "http":
            found = short_way.takes(scope)
            if found is not None:
                scope["app"] = self
                await short_way(scope, receive, send, found)
                return
        await super().__call__(scope, receive, send)


def load_engine(directory: Path, settings: Settings) -> Engine:
    """A version directory as an engine: graphs hash-checked against the manifest, then warmed up."""
    model = load_model_dir(directory, threads=settings.intra_op_threads, provider=settings.execution_provider)
    engine = Engine.from_model(model)
    warm_up(engine)
    return engine


def warm_up(engine: Engine) -> None:
    """One pass through every path a request takes, so the first request pays no set-up cost
    (Pillow's lazy plugin loading included)."""
    pixels = np.zeros((1, *engine.model.manifest.input.shape), dtype=np.float32)
    pixels = bytes_to_array(array_to_png(pixels[0]), engine.contract)[None]
    engine.encode(pixels, sample=True, seed=0)
    array_to_png(engine.decode(engine.prior_latents(1, 0, 1.0))[0])
    if engine.likelihood.name != "none":  # a deterministic decoder has nothing to score with
        engine.score(pixels, k=2, seed=0, binarize_seed=0)


def repository_scanner(settings: Settings) -> Callable[[], dict[str, ModelSource]]:
    model_dir = settings.model_dir
    if model_dir is not None:  # a repository of one model; it wins over VAE_MODEL_REPOSITORY
        return lambda: single_model(model_dir)
    root = settings.model_repository or BUNDLED_REPOSITORY
    return lambda: scan_repository(root)


def default_model_name(settings: Settings, sources: dict[str, ModelSource]) -> str | None:
    """VAE_DEFAULT_MODEL, else the repository's only model, else the bundled default when present."""
    if settings.default_model:
        return settings.default_model
    if len(sources) == 1:
        return next(iter(sources))
    return BUNDLED_DEFAULT_MODEL if BUNDLED_DEFAULT_MODEL in sources else None


async def start(state: AppState) -> None:
    """Load every model the repository holds; the default model's readiness is the server's."""
    try:
        try:
            sources = await asyncio.to_thread(state.registry.scan)
        except ValueError as exc:  # --model-dir without a readable manifest
            log.error("no model served: %s", exc)
            return
        state.default_model = default_model_name(state.settings, sources)
        if state.default_model is None:
            log.error(
                "no default model: the repository holds %s; set VAE_DEFAULT_MODEL to one of them",
                ", ".join(sorted(sources)) or "no model",
            )
        await state.registry.load_all()
        for name, versions in state.registry.served().items():
            log.info("serving %s %s", name, ", ".join(versions))
        if state.default_model is not None and not state.ready:
            log.error("default model %s not served, staying unready (the reason is logged above)", state.default_model)
    finally:
        state.started = True


async def _poll(state: AppState, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)  # a timer: Triton's poll mode re-scans on an interval
        try:
            await state.registry.poll()
        except Exception:  # a directory changing under the scan, say: the next poll looks again
            log.exception("repository poll failed; trying again in %g s", seconds)


def make_lifespan(state: AppState, settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's start-up and shutdown: gRPC, the models' load, the repository poll; then their ends.

    One worker answers while its models load (live, not ready). Several share the port, and a request
    must never meet a worker still loading after another said ready: each takes connections only once
    its models are loaded (uvicorn accepts after the lifespan's start-up)."""
    load_first = settings.worker_processes > 1

    async def start_all() -> None:
        if not load_first:
            await start(state)
        # The decoder processes start with the first image too large to decode inline, not here: most
        # deployments send small images and never need them (see service/decoding.py).
        if settings.repository_poll_s:
            await _poll(state, settings.repository_poll_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # gRPC listens from the start, as HTTP does: its health RPCs answer while the models load.
        grpc = await grpc_server.start(state, app.title, app.version) if settings.grpc_port else None
        if load_first:
            await start(state)
        state.tasks.append(asyncio.create_task(start_all()))
        yield
        if grpc is not None:  # calls in flight get the grace period HTTP's get (uvicorn's)
            await grpc_server.stop(grpc, GRACEFUL_SHUTDOWN_S)
        for task in state.tasks:
            task.cancel()
        state.decoder.close()
        tracing.shutdown()  # the spans still queued for the collector go now

    return lifespan


def create_app(
    settings: Settings | None = None,
    load: EngineLoader = load_engine,
    scan: Callable[[], dict[str, ModelSource]] | None = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """`load` and `scan` default to the real loader and the configured repository; tests pass fakes.
    Traces go to VAE_OTLP_ENDPOINT when it is set, and to `span_exporter` (tests: an in-memory one).
    Tracing is per process, so the app made last configures it (service/tracing.py)."""
    settings = settings or load_settings()
    state = make_state(settings, load, scan)
    tracing.configure(settings.otlp_endpoint, span_exporter, version=package_version())

    app = ServiceApp(
        title="vae-service",
        version=package_version(),
        summary="A variational autoencoder served from ONNX graphs: encode, decode, sample, score, reconstruct.",
        description='Every error is JSON `{"error": {"code", "message"}}`. Every response carries '
        "X-Request-ID. Image routes take a raw image/* body or multipart parts named `file`.",
        lifespan=make_lifespan(state, settings),
        docs_url=None,  # served from local assets by service/docs.py
        redoc_url=None,
        # Starlette would answer /encode/ or /ui with a redirect to an absolute URL built from the Host
        # header, which the client chose; the one redirect the app wants (/ui -> ui/) is its own, relative.
        redirect_slashes=False,
        # FastAPI's own OpenTelemetry spans and metrics: off, as the service makes its own spans
        # (service/tracing.py); left on, every request would first look up opentelemetry's three
        # global providers to find out whether any is configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.vae = state
    errors.install(app, shape_of=v2_errors.error_shape)  # /v2 answers in the protocol's shape
    docs.install(app, lambda: state.resolve().engine.latent_dim if state.ready else None)
    for router in ROUTERS:
        app.include_router(router)
    ui.install(app)
    add_middleware(app, settings, state.metrics)
    return app


def make_state(settings: Settings, load: EngineLoader, scan: Callable[[], dict[str, ModelSource]] | None) -> AppState:
    """The metrics and a registry whose versions are loaded by `load` and served with those settings."""
    metrics = Metrics()

    def load_version(directory: Path) -> ServedModel:
        return ServedModel.create(load(directory, settings), settings, metrics)

    registry = Registry(
        scan=scan or repository_scanner(settings),
        load_version=load_version,
        on_change=metrics.model_changed,
        on_release=ServedModel.close,
        on_served=settle_garbage_collector if settings.gc_freeze else None,
    )
    return AppState(settings=settings, metrics=metrics, registry=registry)


def add_middleware(app: ServiceApp, settings: Settings, metrics: Metrics) -> None:
    """Innermost the hot routes' short way past the router (service/hot_routes.py), then CORS when
    configured, then the body limits, then request ids and metrics, then (outermost, when tracing is on)
    the request spans; in front of them all, when neither CORS nor tracing is on, the hot routes' short way
    past the middleware, with the limits' upload slots and the metrics' accounting."""
    table = HotTable(HOT_ENDPOINTS, handlers=lambda: app.exception_handlers)
    slots = UploadSlots(settings.max_upload_bytes, settings.max_uploads, settings.body_timeout_s)
    answers = Answers(metrics, v2_errors.error_shape, settings.access_log)
    app.add_middleware(HotRoutes, table=table)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-Seed", "X-Model-Name", "X-Model-Version"],
        )
    # The last added is the outermost: request ids and metrics see every answer the limits give.
    app.add_middleware(RequestLimitsMiddleware, metrics=metrics, shape_of=v2_errors.error_shape, slots=slots)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, answers=answers)
    if tracing.enabled():  # off, requests do not pass through it at all
        app.add_middleware(HttpTracingMiddleware)
    elif not settings.cors_origins:
        app.short_way = ShortWay(table, slots, answers)


def package_version() -> str:
    """The installed package's version (pyproject.toml), which /v2 and /openapi.json report."""
    try:
        return importlib.metadata.version("vae-service")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def app_factory() -> FastAPI:
    """Entry point for uvicorn (`--factory`): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    return create_app(settings)
