"""Micro-batching: concurrent /encode requests coalesced into one onnxruntime call.

On by default (`VAE_MICRO_BATCH=false` turns it off): the interleaved benchmark (`make bench`,
docs/benchmarks.md) measures it against the unbatched path in every round. With a wait of 0 ms it
batches only what arrived in the same event-loop tick, so it adds no timer latency. Batching does
not change a row's numbers: the exporter checks that the encoder gives identical rows at batch
sizes 1, 7 and 256 (`parity.batch_max_abs_diff` in the manifest).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from service import tracing
from service.v2 import statistics

T = TypeVar("T")
Encoded = tuple[np.ndarray, np.ndarray]
EncodeFn = Callable[[np.ndarray], Encoded | Awaitable[Encoded]]
# What a request gets back from its batch: its rows of (mean, logvar), when the batch's call started and
# ended (perf_counter_ns), the batch's rows, and whether it was the batch's first request.
Batched = tuple[np.ndarray, np.ndarray, int, int, int, bool]


async def to_the_end(work: asyncio.Future[T]) -> T:
    """The work's result. When the request awaiting it is cancelled first (a gRPC call past its deadline),
    the work still runs to its end before the cancellation goes on: the model slot and worker thread the
    request holds are given back when the work stops using them, not before, so cancelled calls cannot
    pile up more model work than VAE_MAX_IN_FLIGHT and VAE_INFERENCE_THREADS allow."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            try:
                await asyncio.wait((work,))
            except asyncio.CancelledError:
                continue
        if not work.cancelled():
            work.exception()  # retrieved: its failure is nobody's to report now
        raise


class MicroBatcher:
    def __init__(self, encode: EncodeFn, max_rows: int, max_wait_s: float) -> None:
        self.encode, self.max_rows, self.max_wait_s = encode, max_rows, max_wait_s
        self._pending: list[tuple[np.ndarray, asyncio.Future[Batched]]] = []
        self._rows = 0
        self._timer: asyncio.Handle | None = None
        self._running: set[asyncio.Task[None]] = set()  # batches being encoded (the loop keeps weak references)
        self.calls = 0  # onnxruntime calls made, for tests and metrics

    def close(self) -> None:
        """No more waiting: what is queued goes now, and every later submit goes on its own (the
        version is being replaced; no timer of the batcher's may outlive its requests)."""
        self.max_wait_s = 0.0
        self.max_rows = 1
        if self._pending:
            self._flush()

    async def submit(self, pixels: np.ndarray, span: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """This request's rows of the batch they ran in. `span`: the request's `model call` span (service/
        tracing.py; None when off), given the batch's size once it is known."""
        loop = asyncio.get_running_loop()
        queued = time.perf_counter_ns()
        future: asyncio.Future[Batched] = loop.create_future()
        self._pending.append((pixels, future))
        self._rows += len(pixels)
        if self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = (
                loop.call_soon(self._flush) if self.max_wait_s <= 0 else loop.call_later(self.max_wait_s, self._flush)
            )
        mean, logvar, started, ended, rows, first = await to_the_end(future)
        statistics.model_call(queued, started, ended, rows, executions=int(first))  # one execution per batch
        if span is not None:
            tracing.set_attributes(span, {"vae.batch_size": rows})
        return mean, logvar

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._pending, self._rows = self._pending, [], 0
        if not items:
            return
        self.calls += 1
        # The batch runs as its own task: `encode` may hand large batches to a worker thread. Its context has
        # no request's statistics: each request records its share of the call itself (`submit`).
        context = contextvars.copy_context()
        context.run(statistics.current.set, None)
        task = asyncio.get_running_loop().create_task(self._run(items), context=context)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, items: list[tuple[np.ndarray, asyncio.Future[Batched]]]) -> None:
        started = time.perf_counter_ns()
        try:
            batch = np.concatenate([pixels for pixels, _ in items])
            result = self.encode(batch)
            mean, logvar = (await result) if inspect.isawaitable(result) else result
        except Exception as exc:  # every waiting request sees the failure
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        ended, start = time.perf_counter_ns(), 0
        for position, (pixels, future) in enumerate(items):
            end = start + len(pixels)
            if not future.done():
                future.set_result((mean[start:end], logvar[start:end], started, ended, len(batch), position == 0))
            start = end
