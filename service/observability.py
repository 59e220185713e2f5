"""Request ids, Prometheus metrics, the in-flight limit and access logs: one pure-ASGI middleware.

Pure ASGI (not BaseHTTPMiddleware) keeps the per-request cost to a few dictionary operations.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vae_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("vae_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inference = Histogram("vae_inference_duration_seconds", "time in onnxruntime and the scoring math",
                                   ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("vae_images_processed", "images or latents processed", ["operation"],
                              registry=self.registry)
        self.in_flight = Gauge("vae_requests_in_flight", "requests being served", registry=self.registry)
        self.rejected = Counter("vae_requests_rejected_overload", "requests answered 429", registry=self.registry)
        self.model_info = Gauge("vae_model_info", "the served model", ["name", "version", "latent_dim", "likelihood"],
                                registry=self.registry)
        self.ready = Gauge("vae_ready", "1 when the model is loaded and warmed up", registry=self.registry)
        self._children: dict[tuple, Any] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request; the labelled children are cached (labels() costs ~4 us each)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_inference(self, operation: str, rows: int, seconds: float) -> None:
        children = self._children.get(operation)
        if children is None:
            children = (self.inference.labels(operation), self.images.labels(operation))
            self._children[operation] = children
        children[0].observe(seconds)
        children[1].inc(rows)


class ObservabilityMiddleware:
    """Sets X-Request-ID, counts and times requests per route, and answers 429 past `max_in_flight`."""

    def __init__(self, app: Any, state: Any, max_in_flight: int, routes: set[str],
                 limited: set[str], max_body: int, access_log: bool = False) -> None:
        self.app, self.state, self.metrics = app, state, state.metrics
        self.max_in_flight, self.max_body = max_in_flight, max_body
        self.routes, self.limited = routes, limited
        self.log = logging.getLogger("vae.access") if access_log else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        path = scope["path"]
        route = path if path in self.routes else "other"
        method = scope["method"]
        status = 500
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        counted = route in self.limited
        try:
            if counted and self.state.in_flight >= self.max_in_flight:
                self.metrics.rejected.inc()
                await _reject(send_with_id, 429, "overloaded",
                              f"more than {self.max_in_flight} requests in flight; retry shortly")
                return
            declared = _declared_length(scope)
            if declared is not None and declared > self.max_body:  # before a byte of the body is read
                await _reject(send_with_id, 413, "payload_too_large",
                              f"request body exceeds the limit of {self.max_body} bytes")
                return
            if declared is None:  # chunked: count as it arrives
                receive = _limited(receive, self.max_body)
            if counted:
                self.state.in_flight += 1
                self.metrics.in_flight.inc()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if counted:
                    self.state.in_flight -= 1
                    self.metrics.in_flight.dec()
        finally:
            elapsed = time.perf_counter() - began
            self.metrics.observe_request(route, method, status, elapsed)
            if self.log is not None and self.log.isEnabledFor(logging.INFO):
                self.log.info("%s %s %d %.1fms", method, path, status, elapsed * 1000)
            request_id_var.reset(token)


def _request_id(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _declared_length(scope: dict) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return None


def _limited(receive: Any, limit: int) -> Any:
    """A receive that raises 413 once a body without Content-Length passes `limit` bytes.
    (An HTTPException is what FastAPI lets through from body parsing; the error layer shapes it.)"""
    received = 0

    async def receive_limited() -> dict:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
        return message

    return receive_limited


async def _reject(send: Any, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 429:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, json_format: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(_JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    for name in ("vae", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
