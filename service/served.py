"""One served model version: its engine, with its own in-flight limit, worker threads and batcher.

The registry (service/registry.py) holds these per model and version. A request resolves one and
keeps it until it finishes, so a live swap never moves a running request to another version.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import numpy as np

from service import tracing
from service.batching import MicroBatcher, to_the_end
from service.engine import Encoding, Engine
from service.errors import ApiError
from service.observability import Metrics
from service.settings import Settings
from service.v2 import statistics

T = TypeVar("T")


@dataclass
class ModelCalls:
    """How one version's model calls run: inline when small, else on one of `inference_threads` worker
    threads, each timed into the metrics. Kept apart from ServedModel so that the batcher can call it
    without referring back to the served version: no reference cycle, so a replaced version is freed
    the moment its last request ends, not whenever Python's cyclic collector runs."""

    name: str
    version: str
    settings: Settings
    metrics: Metrics
    limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)  # made on first use, in the loop
    row_weight: int = 1  # a row's cost in rows of a 28 x 28 image: VAE_INLINE_COST is calibrated on those

    async def __call__(self, operation: str, rows: int, fn: Callable[..., T], *args: Any, off_loop: bool = False) -> T:
        """`off_loop`: on a worker thread whatever its size (the micro-batcher's batch, when other requests
        could use the loop meanwhile)."""
        queued = time.perf_counter_ns()
        if not off_loop and rows * self.row_weight <= self.settings.inline_cost:
            started = queued
            result = fn(*args)
        else:
            if self.limiter is None:
                self.limiter = anyio.CapacityLimiter(self.settings.inference_threads)
            began: list[int] = []  # when a worker thread took it up: the wait before is the queue

            def timed() -> T:
                began.append(time.perf_counter_ns())
                return fn(*args)

            result = await to_the_end(asyncio.ensure_future(anyio.to_thread.run_sync(timed, limiter=self.limiter)))
            started = began[0]
        ended = time.perf_counter_ns()
        self.metrics.observe_inference(self.name, self.version, operation, rows, (ended - started) / 1e9)
        statistics.model_call(queued, started, ended, rows)
        return result


@dataclass
class ServedModel:
    name: str
    version: str
    engine: Engine
    settings: Settings
    metrics: Metrics
    batcher: MicroBatcher | None = None
    in_flight: int = 0  # model calls running or queued: the max_in_flight limit, per version
    calls: ModelCalls = field(init=False, repr=False)  # made from the fields

    def __post_init__(self) -> None:
        _, height, width = self.engine.model.manifest.input.shape
        # A model's row costs about its pixels' worth of a 28 x 28 one (convolutions scale with the area): a
        # 512 x 512 autoencoder's single row runs on a worker thread, never on the event loop.
        weight = max(1, math.ceil(height * width / (28 * 28)))
        self.calls = ModelCalls(self.name, self.version, self.settings, self.metrics, row_weight=weight)

    @classmethod
    def create(cls, engine: Engine, settings: Settings, metrics: Metrics) -> ServedModel:
        manifest = engine.model.manifest
        served = cls(manifest.name, manifest.version, engine, settings, metrics)
        if settings.micro_batch:  # a batch is one model call: inline when small, else on a worker thread
            calls, encode = served.calls, engine.encoder_outputs
            # A batch goes off the loop under load only when the worker has a second CPU to run it on beside
            # the loop: on one, the thread's hops are paid and nothing runs meanwhile (docs/benchmarks.md)
            spare_cpu = settings.cpus_per_worker >= 2
            served.batcher = MicroBatcher(
                lambda pixels: calls("encode", len(pixels), encode, pixels),
                max_rows=settings.max_batch,
                max_wait_s=settings.micro_batch_wait_ms / 1000,
                off_loop=(lambda pixels: calls("encode", len(pixels), encode, pixels, off_loop=True))
                if spare_cpu
                else None,
                others=lambda: metrics.active,
                max_running=settings.inference_threads,
            )
        return served

    def close(self) -> None:
        """The registry stopped serving this version. Requests that resolved it before finish on it;
        the batcher sends what it holds now instead of waiting for its timer, and the version's
        sessions are freed when the last of those requests lets go of it."""
        if self.batcher is not None:
            self.batcher.close()

    @property
    def ref(self) -> dict[str, str]:
        """How every response names the model that produced it."""
        return {"name": self.name, "version": self.version}

    @property
    def headers(self) -> dict[str, str]:
        """The same, for responses that are images."""
        return {"X-Model-Name": self.name, "X-Model-Version": self.version}

    def _admit(self) -> None:
        """Take a model slot, or 429. Counted around the model work only, so a slow upload (its own
        limit and deadline live in the limits middleware, service/limits.py) never holds one."""
        if self.in_flight >= self.settings.max_in_flight:
            self.metrics.rejected.inc()
            raise ApiError(
                429,
                "overloaded",
                f"more than {self.settings.max_in_flight} model calls in flight on "
                f"{self.name} {self.version}; retry shortly",
                headers={"Retry-After": "1"},
            )
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
            with self._model_span(operation, rows, batch_size=rows):
                return await self.calls(operation, rows, fn, *args)
        finally:
            self._release()

    def _model_span(self, operation: str, rows: int, batch_size: int | None) -> AbstractContextManager[Any]:
        """A `model call` span for one request's call, opened in the request's own context (a batch runs
        in a task of its own); `batch_size`: the rows of the execution, when known before it runs."""
        if not tracing.enabled():
            return tracing.NO_SPAN
        attributes = {"vae.model": self.name, "vae.version": self.version, "vae.operation": operation, "vae.rows": rows}
        if batch_size is not None:
            attributes["vae.batch_size"] = batch_size
        return tracing.span("model call", attributes)

    async def encode(self, pixels: np.ndarray, sample: bool, seed: int) -> Encoding:
        """/encode's model calls (`Engine.encode`): the encoder's through the micro-batcher when it is on. (Small
        model calls run inline and never overlap, so "other calls in flight" cannot tell when to batch; with
        a wait of 0 the batcher costs a lone request one event-loop iteration.) A two-level model's batch
        also gives the images' features, from which its lower level is then read, within the limits."""
        engine = self.engine
        if self.batcher is None:
            return await self.run("encode", len(pixels), engine.encode, pixels, sample, seed)
        self._admit()
        try:
            with self._model_span("encode", len(pixels), batch_size=None) as span:  # the batch's size: from submit
                outputs = await self.batcher.submit(pixels, span)  # the batch's call is timed by `calls`
        finally:
            self._release()
        if engine.levels is None:
            return engine.encoding(pixels, outputs, sample, seed)
        return await self.run("encode lower level", len(pixels), engine.encoding, pixels, outputs, sample, seed)
