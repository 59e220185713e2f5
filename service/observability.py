"""Request ids, Prometheus metrics, access logs and the generic 500: the outer pure-ASGI middleware.

The limits on request bodies are the next one in (service/limits.py). Pure ASGI (not
BaseHTTPMiddleware) keeps the per-request cost to a few dictionary operations.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import json
import logging
import os
import re
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import errors
from service.errors import ShapeResolver, native_shape
from service.limits import CLIENT_CLOSED, ClientGone

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # vae-serve sets it for several workers (service/cli.py)


class Metrics:
    """The service's Prometheus metrics. With several uvicorn workers, `vae-serve` sets
    PROMETHEUS_MULTIPROC_DIR before the workers start; prometheus_client then keeps every value in a
    file per process there, and `registry` (what /metrics exposes) sums the files of the whole
    process group, so a scrape counts every worker's requests whichever worker answers it."""

    def __init__(self) -> None:
        # prometheus_client chose file-backed values on import, from this same variable
        multiprocess_dir = os.environ.get(MULTIPROCESS_DIR)
        self.registry = CollectorRegistry(auto_describe=not multiprocess_dir)
        if multiprocess_dir:  # the values live in the files: the metrics need no registry of their own
            _WorkerGroupCollector(self.registry, multiprocess_dir)  # type: ignore[no-untyped-call]  # untyped base
            atexit.register(mark_process_dead, os.getpid(), multiprocess_dir)
        own = None if multiprocess_dir else self.registry
        self.requests = Counter(
            "vae_requests",
            "requests by route, method and status (gRPC calls: their method path, GRPC, their status code's name)",
            ["route", "method", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "vae_request_duration_seconds",
            "request latency by route (a gRPC call's: its method path)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.inference = Histogram(
            "vae_inference_duration_seconds",
            "time in onnxruntime and the scoring math",
            ["model", "version", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.images = Counter(
            "vae_images_processed", "images or latents processed", ["model", "version", "operation"], registry=own
        )
        # Gauges summed over the live workers, or (a model being served) the most any live worker says.
        self.in_flight = Gauge(
            "vae_requests_in_flight", "model calls running or queued", registry=own, multiprocess_mode="livesum"
        )
        self.rejected = Counter("vae_requests_rejected_overload", "requests answered 429", registry=own)
        self.model_info = Gauge(
            "vae_model_info",
            "1 for each model version being served, 0 once it is not",
            ["model", "version"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.workers = Gauge(
            "vae_workers",
            "worker processes whose metrics this endpoint reports",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.workers.set(1)
        self._children: dict[tuple[Any, ...], Any] = {}
        # Requests (HTTP and gRPC) being handled by this process now: the micro-batcher's sign that others
        # will want the model while a batch runs (service/batching.py). A plain count, not exported.
        self.active = 0

    def model_changed(self, name: str, version: str, state: str) -> None:
        """The registry's hook: a version became READY, or stopped being served."""
        self.model_info.labels(name, version).set(1 if state == "READY" else 0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request; the labelled children are cached: labels() checks and hashes its
        values on every call, a cost each request would pay twice."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        """Count and time one gRPC call: its full method path is the route, GRPC the method, its status
        code's name (OK, INVALID_ARGUMENT, ...) the status."""
        key = (method, "GRPC", code)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, "GRPC", code), self.latency.labels(method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_inference(self, model: str, version: str, operation: str, rows: int, seconds: float) -> None:
        key = (model, version, operation)
        children = self._children.get(key)
        if children is None:
            children = (self.inference.labels(*key), self.images.labels(*key))
            self._children[key] = children
        children[0].observe(seconds)
        children[1].inc(rows)


class _WorkerGroupCollector(MultiProcessCollector):
    """prometheus_client's collector over the files of every worker, which first drops the live
    gauges of workers that are gone: a worker removes its own as it exits (atexit), this covers one
    that was killed, so that its last in-flight count does not stay in the sum."""

    def collect(self) -> Any:
        for path in os.scandir(self._path):
            name = path.name
            if name.startswith("gauge_live") and name.endswith(".db"):
                pid = int(name[:-3].rsplit("_", 1)[1])
                if not _alive(pid):
                    try:
                        mark_process_dead(pid, self._path)  # type: ignore[no-untyped-call]
                    except FileNotFoundError:  # another worker's scrape removed it first
                        pass
        return super().collect()  # type: ignore[no-untyped-call]  # prometheus_client leaves it untyped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user
        return True
    return True


class Answers:
    """How every answered request is accounted for: counted and timed per route, its access log line
    written, and an unexpected exception turned into one logged traceback and the generic 500. The
    observability middleware's, and the hot routes' short way's (service/hot_routes.py)."""

    def __init__(self, metrics: Metrics, shape_of: ShapeResolver = native_shape, access_log: bool = False) -> None:
        self.metrics, self.shape_of = metrics, shape_of
        self.log = logging.getLogger("vae.access") if access_log else None

    async def internal_error(self, scope: Scope, send: Send, *headers: tuple[bytes, bytes]) -> None:
        """The generic 500 (the caller has logged the exception: with its traceback, whether or not the
        response had started)."""
        body = errors.error_bytes(*errors.INTERNAL_ERROR, self.shape_of(scope["path"]))
        await errors.send_error(send, 500, body, *headers)

    def record(self, scope: Scope, status: int, elapsed: float) -> None:
        """Count and time the answered request, and write its access log line."""
        # The matched route's template (FastAPI puts the route in the scope): one label per route,
        # whatever the path parameters, with no list of paths to keep in sync.
        route = getattr(scope.get("route"), "path", "other")
        self.metrics.observe_request(route, scope["method"], status, elapsed)
        if self.log is not None and self.log.isEnabledFor(logging.INFO):
            self.log.info("%s %s %d %.1fms", scope["method"], scope["path"], status, elapsed * 1000)


class ObservabilityMiddleware:
    """Sets X-Request-ID, counts and times requests per route, writes the access log, and turns an
    unexpected exception into one logged traceback and a generic 500 that carries the request id.
    A client that left (`ClientGone`, from the limits middleware inside this one) counts as 499."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        shape_of: ShapeResolver = native_shape,
        access_log: bool = False,
        answers: Answers | None = None,
    ) -> None:
        self.app, self.metrics = app, metrics
        self.answers = answers or Answers(metrics, shape_of, access_log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = request_id_of(scope)
        token = request_id_var.set(request_id)
        header = (b"x-request-id", request_id.encode())
        status, started = 500, False
        metrics = self.metrics
        metrics.active += 1

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = [*message.get("headers", []), header]  # a new message: whoever made it may keep it
                message = {**message, "headers": relative_locations(headers) if 300 <= status < 400 else headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientGone:
            status = CLIENT_CLOSED
        except Exception:
            errors.log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:  # else the connection is cut mid-response, which the client notices
                await self.answers.internal_error(scope, send_with_id)
        finally:
            metrics.active -= 1
            self.answers.record(scope, status, time.perf_counter() - began)
            request_id_var.reset(token)


def relative_locations(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Every redirect stays on this server: an absolute Location loses its scheme and host (which a
    framework builds from the client's Host header) and keeps its path and query."""
    rewritten = []
    for name, value in headers:
        if name.lower() == b"location":
            parts = urlsplit(value.decode("latin-1"))
            if parts.scheme or parts.netloc:  # one leading slash: "//host/x" would name a host again
                path = "/" + parts.path.lstrip("/")
                value = urlunsplit(("", "", path, parts.query, parts.fragment)).encode("latin-1")
        rewritten.append((name, value))
    return rewritten


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is one to echo, else a fresh one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return valid_request_id(value.decode("latin-1")) or new_request_id()
    return new_request_id()


class _Ids:
    """Request ids: 16 random hex digits drawn once per process, then a counter's 16. Unique across workers and
    restarts as uuid4's are, without a system call per request (uuid4 reads the kernel's randomness each time;
    2 to 3 percent of a gRPC call's time under load, by py-spy)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix, self.counter = os.urandom(8).hex(), itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reset)  # a forked worker draws its own (a spawned one imports afresh)


def new_request_id() -> str:
    """A fresh request id, 32 hex digits (the length of uuid4's)."""
    return _ids.next()


def valid_request_id(candidate: str | None) -> str | None:
    """The client's request id when it is one to echo (1 to 128 of letters, digits and ._:-), else None."""
    return candidate if candidate is not None and _VALID_ID.match(candidate) else None


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, json_format: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        _JsonFormatter()
        if json_format
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    for name in ("vae", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
