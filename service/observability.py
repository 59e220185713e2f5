"""Request ids, Prometheus metrics, body guards, error containment and access logs: one pure-ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware) keeps the per-request cost to a few dictionary operations.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import os
import re
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.requests import ClientDisconnect

from service import errors

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
            _WorkerGroupCollector(self.registry, multiprocess_dir)
            atexit.register(mark_process_dead, os.getpid(), multiprocess_dir)
        own = None if multiprocess_dir else self.registry
        self.requests = Counter(
            "vae_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=own
        )
        self.latency = Histogram(
            "vae_request_duration_seconds",
            "HTTP request latency by route",
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
        self._children: dict[tuple, Any] = {}

    def model_changed(self, name: str, version: str, state: str) -> None:
        """The registry's hook: a version became READY, or stopped being served."""
        self.model_info.labels(name, version).set(1 if state == "READY" else 0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request; the labelled children are cached (labels() costs ~4 us each)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
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
                        mark_process_dead(pid, self._path)
                    except FileNotFoundError:  # another worker's scrape removed it first
                        pass
        return super().collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user
        return True
    return True


class BodyTimeout(HTTPException):
    """The body did not arrive in time. An HTTPException, so FastAPI's JSON body parsing lets it
    through to the error layer as it is; Connection: close, as the client may still be sending."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", headers={"Connection": "close"})


class ObservabilityMiddleware:
    """Sets X-Request-ID, counts and times requests per route, guards request bodies (size, upload
    count, deadline), and turns a client abort into one log line and status 499, an unexpected
    exception into one logged traceback and a generic 500 that carries the request id."""

    def __init__(
        self, app: Any, state: Any, max_body: int, max_uploads: int, body_timeout_s: float, access_log: bool = False
    ) -> None:
        self.app, self.state, self.metrics = app, state, state.metrics
        self.max_body, self.max_uploads, self.body_timeout_s = max_body, max_uploads, body_timeout_s
        self.uploads: set[_Body] = set()  # bodies being received now
        self._sweeper: asyncio.Task[None] | None = None
        self.log = logging.getLogger("vae.access") if access_log else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        path = scope["path"]
        method = scope["method"]
        status = 500
        started = False
        header = (b"x-request-id", request_id.encode())
        body: _Body | None = None
        aborted = False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if body is not None and body.disconnected:  # nobody to answer
                return
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", []), header]
                if 300 <= status < 400:
                    message["headers"] = _relative_locations(message["headers"])
            await send(message)

        try:
            length = _body_length(scope)
            if length is None:
                await self.app(scope, receive, send_with_id)
                return
            if length > self.max_body:  # before a byte of the body is read
                await _reject(
                    send_with_id,
                    413,
                    "payload_too_large",
                    f"request body exceeds the limit of {self.max_body} bytes",
                    v2=errors.is_v2(path),
                )
                return
            if len(self.uploads) >= self.max_uploads:
                self.metrics.rejected.inc()
                await _reject(
                    send_with_id,
                    429,
                    "overloaded",
                    f"more than {self.max_uploads} uploads in progress; retry shortly",
                    v2=errors.is_v2(path),
                )
                return
            body = _Body(self, receive)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
            try:
                await self.app(scope, body.receive, send_with_id)
            finally:
                body.release()
        except Exception as exc:
            aborted = isinstance(exc, ClientDisconnect) or (body is not None and body.disconnected)
            if not aborted:
                errors.log.exception("unhandled error on %s %s", method, path)
                if not started:  # else the connection is cut mid-response, which the client notices
                    await _reject(send_with_id, 500, *errors.INTERNAL_ERROR, v2=errors.is_v2(path))
        finally:
            if aborted or (body is not None and body.disconnected):
                status = CLIENT_CLOSED
                errors.log.info("client disconnected before its request was answered: %s %s", method, path)
            elapsed = time.perf_counter() - began
            # The matched route's template (FastAPI puts the route in the scope): one label per route,
            # whatever the path parameters, with no list of paths to keep in sync.
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.observe_request(route, method, status, elapsed)
            if self.log is not None and self.log.isEnabledFor(logging.INFO):
                self.log.info("%s %s %d %.1fms", method, path, status, elapsed * 1000)
            request_id_var.reset(token)

    async def _sweep(self) -> None:
        """Times out bodies past their deadline, checking every `tick`; runs while any is being received.
        One sweeper instead of a timer per receive: asyncio.timeout_at costs about 27 us a call,
        a timer per request more than the rest of this middleware (python3.11, this machine)."""
        tick = min(1.0, self.body_timeout_s / 10)
        try:
            while self.uploads:
                await asyncio.sleep(tick)
                now = time.monotonic()
                for body in [body for body in self.uploads if body.deadline <= now]:
                    body.expire()
        finally:
            self._sweeper = None


CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first


class _Body:
    """A request body being received: it holds an upload slot until its last byte (or the end of the
    request); a receive still waiting at the deadline is cancelled by the sweeper and raises 408."""

    __slots__ = ("deadline", "disconnected", "expired", "holding", "inner", "owner", "received", "waiting")

    def __init__(self, owner: ObservabilityMiddleware, receive: Any) -> None:
        self.owner, self.inner = owner, receive
        self.deadline = time.monotonic() + owner.body_timeout_s
        self.received, self.holding, self.disconnected, self.expired = 0, True, False, False
        self.waiting: asyncio.Task[Any] | None = None
        owner.uploads.add(self)

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.owner.uploads.discard(self)

    def expire(self) -> None:
        if self.waiting is not None and not self.expired:
            self.expired = True
            self.waiting.cancel()

    async def receive(self) -> dict:
        if not self.holding:  # the body is in: what is left is waiting for a disconnect
            message = await self.inner()
            self.disconnected = self.disconnected or message["type"] == "http.disconnect"
            return message
        if time.monotonic() >= self.deadline:  # past it while busy between receives
            self.release()
            raise BodyTimeout(self.owner.body_timeout_s)
        self.waiting = asyncio.current_task()
        try:
            message = await self.inner()
        except asyncio.CancelledError:
            if not self.expired:
                raise
            self.waiting.uncancel()
            self.release()
            raise BodyTimeout(self.owner.body_timeout_s) from None
        finally:
            self.waiting = None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.owner.max_body:  # a chunked body has no Content-Length to check first
                self.release()
                raise HTTPException(
                    413,
                    f"request body exceeds the limit of {self.owner.max_body} bytes",
                    headers={"Connection": "close"},
                )
            if not message.get("more_body", False):
                self.release()
        else:
            self.disconnected = True
            self.release()
        return message


def _relative_locations(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
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


def _request_id(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _body_length(scope: dict) -> int | None:
    """The declared body length; 0 for a chunked body (counted as it arrives); None without a body.
    (The server has already refused a malformed or contradictory Content-Length with 400.)"""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding":
            return 0
    return length or None


async def _reject(send: Any, status: int, code: str, message: str, v2: bool = False) -> None:
    body = json.dumps({"error": message} if v2 else {"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 429:
        headers.append((b"retry-after", b"1"))
    elif status == 413:  # the client may still be sending the body
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
