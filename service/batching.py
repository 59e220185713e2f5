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
Encoded = tuple[np.ndarray, ...]  # the encoder's outputs, a row per image each: mean, logvar (and features)
EncodeFn = Callable[[np.ndarray], Encoded | Awaitable[Encoded]]
# What a request gets back from its batch: its rows of each output, when the batch's call started and
# ended (perf_counter_ns), the batch's rows, and whether it was the batch's first request.
Batched = tuple[Encoded, int, int, int, bool]


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
    """Concurrent requests' rows as one model call. A batch is sent at the end of the event-loop tick
    its first request arrived in (or after `max_wait_s`, or at `max_rows`), and runs on the event loop,
    where a lone request pays no thread hop.

    Under load it gathers more: when other requests are being handled (`others()` counts this process's
    requests, this batch's own included), the batch runs off the loop (`off_loop`: on a worker thread,
    where onnxruntime releases the GIL), so that the loop goes on reading and decoding the next requests
    while it runs (service/served.py gives `off_loop` only to a worker with a CPU to spare for it); and
    while `max_running` batches are running, new rows wait for one of them to end instead of going as a
    batch of their own (docs/benchmarks.md, "The hot path"). The mean batch is
    vae_images_processed_total over vae_inference_duration_seconds_count in /metrics."""

    def __init__(
        self,
        encode: EncodeFn,
        max_rows: int,
        max_wait_s: float,
        *,
        off_loop: EncodeFn | None = None,
        others: Callable[[], int] | None = None,
        max_running: int | None = None,
    ) -> None:
        self.encode, self.max_rows, self.max_wait_s = encode, max_rows, max_wait_s
        self.off_loop, self.others, self.max_running = off_loop, others, max_running
        self._pending: list[tuple[np.ndarray, asyncio.Future[Batched]]] = []
        self._rows = 0
        self._timer: asyncio.Handle | None = None
        self._running: set[asyncio.Task[None]] = set()  # batches being encoded (the loop keeps weak references)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the queued requests
        self.calls = 0  # onnxruntime calls made, for tests and metrics

    def close(self) -> None:
        """No more waiting: what is queued goes now, and every later submit goes on its own (the
        version is being replaced; no timer of the batcher's may outlive its requests)."""
        self.max_wait_s = 0.0
        self.max_rows = 1
        self.max_running = None
        if self._pending:
            self._flush()

    async def submit(self, pixels: np.ndarray, span: Any = None) -> Encoded:
        """This request's rows of each of the batch's outputs. `span`: the request's `model call` span (service/
        tracing.py; None when off), given the batch's size once it is known."""
        if self._pending:  # the queued requests' loop is this one (in this Python, looking it up is a system call)
            loop = self._loop
            assert loop is not None
        else:
            loop = self._loop = asyncio.get_running_loop()
        queued = time.perf_counter_ns()
        future: asyncio.Future[Batched] = loop.create_future()
        self._pending.append((pixels, future))
        self._rows += len(pixels)
        if self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None and not self._saturated():  # else the end of a running batch sends these
            self._timer = (
                loop.call_soon(self._flush) if self.max_wait_s <= 0 else loop.call_later(self.max_wait_s, self._flush)
            )
        outputs, started, ended, rows, first = await to_the_end(future)
        statistics.model_call(queued, started, ended, rows, executions=int(first))  # one execution per batch
        if span is not None:
            tracing.set_attributes(span, {"vae.batch_size": rows})
        return outputs

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        items, self._pending, self._rows = self._pending, [], 0
        if not items:
            return
        self.calls += 1
        # Off the loop when requests other than this batch's are being handled: they go on meanwhile.
        encode = (
            self.off_loop
            if self.off_loop is not None and self.others is not None and self.others() > len(items)
            else self.encode
        )
        # The batch runs as its own task: `encode` may hand large batches to a worker thread. Its context has
        # no request's statistics: each request records its share of the call itself (`submit`).
        context = contextvars.copy_context()
        context.run(statistics.current.set, None)
        loop = self._loop
        assert loop is not None  # set by the submit that queued the first item
        task = loop.create_task(self._run(items, encode), context=context)
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _saturated(self) -> bool:
        return self.max_running is not None and len(self._running) >= self.max_running

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A batch ended: what gathered meanwhile goes next."""
        self._running.discard(task)
        if self._pending and self._timer is None and self._loop is not None:
            self._timer = self._loop.call_soon(self._flush)

    async def _run(self, items: list[tuple[np.ndarray, asyncio.Future[Batched]]], encode: EncodeFn) -> None:
        started = time.perf_counter_ns()
        try:
            batch = np.concatenate([pixels for pixels, _ in items])
            result = encode(batch)
            outputs = (await result) if inspect.isawaitable(result) else result
        except Exception as exc:  # every waiting request sees the failure
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        ended, start = time.perf_counter_ns(), 0
        for position, (pixels, future) in enumerate(items):
            end = start + len(pixels)
            if not future.done():
                rows = tuple(output[start:end] for output in outputs)
                future.set_result((rows, started, ended, len(batch), position == 0))
            start = end
