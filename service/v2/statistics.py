"""Triton's statistics extension: per v2 model and version, how many inferences succeeded and failed,
and the cumulative nanoseconds they spent in the queue, preparing inputs, in the model and writing
outputs. Both transports record into the same store (service/v2/protocol.py), so
`GET /v2/models/stats` and the gRPC ModelStatistics answer the same numbers.

What each duration holds here:

- `queue`: waiting for a model slot: a worker thread (VAE_INFERENCE_THREADS) or the micro-batcher's batch;
- `compute_infer`: the model calls themselves (onnxruntime and the scoring math around it);
- `compute_input`: parsing the request and everything the operation does outside its model calls
  (decoding images, preprocessing; for an operation that renders PNGs, their encoding too);
- `compute_output`: checking the outputs and encoding the response.

`success` counts a request and its whole time from the parsed transport message to the encoded
response; `fail` a request the protocol refused or that failed, with the time it took to fail.
`inference_count` counts rows (Triton counts each request's batch size), `execution_count` model
executions: a micro-batch that served three requests is one execution.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
# Triton's InferStatistics also has these; no response cache here, so they stay zero.
CACHE_DURATIONS = ("cache_hit", "cache_miss")


@dataclass
class Phases:
    """What one request's model calls cost, filled in by the code that runs them (service/served.py,
    service/batching.py) while the request's context holds it."""

    queue_ns: int = 0
    infer_ns: int = 0
    executions: int = 0
    batch_size: int = 0  # rows of the largest execution that served the request


current: contextvars.ContextVar[Phases | None] = contextvars.ContextVar("vae_phases", default=None)


def model_call(queued_ns: int, started_ns: int, ended_ns: int, rows: int, executions: int = 1) -> None:
    """One model call of the current request: from when it asked for a slot, when it started, when it
    ended, the rows it ran, and whether it counts as an execution of its own (a micro-batch counts once,
    for the first request in it)."""
    phases = current.get()
    if phases is None:  # a native route, or a call outside any request
        return
    phases.queue_ns += started_ns - queued_ns
    phases.infer_ns += ended_ns - started_ns
    phases.executions += executions
    phases.batch_size = max(phases.batch_size, rows)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(ns, 0)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStatistics:
    """One v2 model version's counters, in Triton's units: nanoseconds, and milliseconds since the epoch
    for the last inference."""

    durations: dict[str, Duration] = field(default_factory=lambda: {n: Duration() for n in DURATIONS})
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    batches: dict[int, BatchStatistics] = field(default_factory=dict)

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        """Triton's JSON (its `model_stats` entries), which tritonclient.http reads."""
        stats = {n: d.as_dict() for n, d in self.durations.items()}
        stats.update({n: Duration().as_dict() for n in CACHE_DURATIONS})
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": stats,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.as_dict(),
                    "compute_infer": b.compute_infer.as_dict(),
                    "compute_output": b.compute_output.as_dict(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [],
            "response_stats": {},  # per response of a decoupled model: none here
        }


class Request:
    """One inference request being timed: made when its transport starts on its message (`began`), `model()`
    around its operation, and Statistics.record at its end."""

    __slots__ = ("began", "input_ns", "output_began", "phases", "rows")

    def __init__(self, began_ns: int) -> None:
        self.began = began_ns
        self.phases = Phases()
        self.input_ns = 0
        self.output_began = 0
        self.rows = 0

    def model(self, rows: int) -> _Operation:
        """Around the operation (`with request.model(rows):`): its model calls record into this request's
        phases; the rest of its time is input preparation."""
        self.rows = rows
        return _Operation(self)


class _Operation:
    """Request.model's context: a class, as a generator-based context manager costs several times more
    on every inference."""

    __slots__ = ("request", "token")

    def __init__(self, request: Request) -> None:
        self.request = request

    def __enter__(self) -> None:
        self.token = current.set(self.request.phases)

    def __exit__(self, *exc_info: object) -> None:
        current.reset(self.token)
        request = self.request
        request.output_began = time.perf_counter_ns()
        request.input_ns = request.output_began - request.began - request.phases.queue_ns - request.phases.infer_ns


class Statistics:
    """Every v2 model version's counters, keyed by (v2 name, version). One per app; the event loop is the
    only writer, so no lock."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelStatistics] = {}

    def record(self, name: str, version: str, request: Request, ok: bool) -> None:
        now = time.perf_counter_ns()
        stats = self.models.get((name, version))
        if stats is None:  # (setdefault would build a ModelStatistics on every request)
            stats = self.models[(name, version)] = ModelStatistics()
        total = now - request.began
        if not ok:
            stats.durations["fail"].add(total)
            return
        phases = request.phases
        output_ns = now - (request.output_began or now)
        d = stats.durations
        d["success"].add(total)
        d["queue"].add(phases.queue_ns)
        d["compute_input"].add(request.input_ns)
        d["compute_infer"].add(phases.infer_ns)
        d["compute_output"].add(output_ns)
        stats.inference_count += max(request.rows, 1)
        stats.execution_count += phases.executions
        stats.last_inference_ms = time.time_ns() // 1_000_000
        size = phases.batch_size or max(request.rows, 1)
        batch = stats.batches.get(size)
        if batch is None:
            batch = stats.batches[size] = BatchStatistics()
        batch.compute_input.add(request.input_ns)
        batch.compute_infer.add(phases.infer_ns)
        batch.compute_output.add(output_ns)

    def get(self, name: str, version: str) -> ModelStatistics:
        return self.models.get((name, version)) or ModelStatistics()
