"""What the app holds while it runs, and the dependencies that hand it to routes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import anyio
from fastapi import Request

from service.batching import MicroBatcher
from service.decoding import ImageDecoder
from service.engine import Engine
from service.errors import ApiError
from service.params import parse_query
from service.observability import Metrics
from service.settings import Settings

T = TypeVar("T")
Q = TypeVar("Q")


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    decoder: ImageDecoder = field(default=None, repr=False)  # type: ignore[assignment]  # from settings
    engine: Engine | None = None
    batcher: MicroBatcher | None = None
    in_flight: int = 0  # model calls running or queued: the max_in_flight limit
    load_failed: bool = False
    loading: asyncio.Task[Any] | None = field(default=None, repr=False)
    limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)  # made on first use, in the loop

    def __post_init__(self) -> None:
        if self.decoder is None:
            self.decoder = ImageDecoder.from_settings(self.settings)

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def model_ref(self) -> dict[str, str]:
        manifest = self.require_engine().model.manifest
        return {"name": manifest.name, "version": manifest.version}

    @property
    def not_ready_message(self) -> str:
        return "the model failed to load; see the server log" if self.load_failed else "the model is loading"

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise ApiError(503, "not_ready", self.not_ready_message, headers={"Retry-After": "1"})
        return self.engine

    def _admit(self) -> None:
        """Take a model slot, or 429. Counted here, around the model work only, so a slow upload
        (its own limit and deadline live in the observability middleware) never holds one."""
        if self.in_flight >= self.settings.max_in_flight:
            self.metrics.rejected.inc()
            raise ApiError(429, "overloaded", f"more than {self.settings.max_in_flight} model calls in flight; "
                           "retry shortly", headers={"Retry-After": "1"})
        self.in_flight += 1
        self.metrics.in_flight.inc()

    def _release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()

    async def run(self, operation: str, rows: int, fn: Callable[..., T], *args: Any) -> T:
        """Run model work within the in-flight limit, and time it. Small work runs on the event loop:
        the thread hop costs more than a few rows of onnxruntime. Larger work goes to one of
        `inference_threads` worker threads (onnxruntime releases the GIL); the rest wait their turn,
        so memory stays bounded under load."""
        self._admit()
        try:
            began = time.perf_counter()
            if rows <= self.settings.inline_cost:
                result = fn(*args)
            else:
                if self.limiter is None:
                    self.limiter = anyio.CapacityLimiter(self.settings.inference_threads)
                result = await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
            self.metrics.observe_inference(operation, rows, time.perf_counter() - began)
            return result
        finally:
            self._release()

    async def encode(self, engine: Engine, pixels, sample: bool, seed: int):
        """/encode's model call: through the micro-batcher when it is on and other model calls are in
        flight (alone, there is nothing to coalesce and the batcher would only add a loop iteration)."""
        if self.batcher is None or self.in_flight == 0:
            return await self.run("encode", len(pixels), engine.encode, pixels, sample, seed)
        self._admit()
        try:
            began = time.perf_counter()
            mean, logvar = await self.batcher.submit(pixels)
            self.metrics.observe_inference("encode", len(pixels), time.perf_counter() - began)
        finally:
            self._release()
        return mean, logvar, engine.reparameterize(pixels, mean, logvar, seed) if sample else None


def app_state(request: Request) -> AppState:
    """Routes call this instead of declaring FastAPI dependencies: resolving a dependency costs
    FastAPI four parameter-parsing passes per request, the largest share of /encode's overhead
    over a bare handler in `python -m bench.inprocess --profile`."""
    return request.app.state.vae


def model_route(request: Request, query_model: type[Q]) -> tuple[AppState, Engine, Q]:
    """What every model route starts with: the state, the engine (503 when not ready), the query."""
    state = app_state(request)
    return state, state.require_engine(), parse_query(request, query_model)
