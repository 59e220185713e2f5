"""Traces of HTTP requests: the outermost pure-ASGI middleware, added only when tracing is on.

Each request is a SERVER span (service/tracing.py) named by its method and the route it matched
(`POST /v2/models/{name}/infer`; `HTTP POST` where no route matched), continuing the W3C
`traceparent` the client sent. The spans of the work inside it (`decode images`, `model call`) are
its children, and so is `response`: from the response's first message to its last, the time the
server took to send it. Built into the app only when tracing is configured, so that with tracing
off (the default) a request does not pass through it at all.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import tracing


class HttpTracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        traceparent, tracestate = trace_context(scope["headers"])
        attributes = {"http.request.method": method, "url.path": scope["path"]}
        with tracing.request_span(f"HTTP {method}", traceparent, tracestate, attributes) as span:
            response = _Response(span, send)
            try:
                await self.app(scope, receive, response.send)
            finally:
                response.close()
                _finish(span, scope, response)


def trace_context(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The `traceparent` header and the `tracestate` headers (several are one list, comma-joined)."""
    traceparent, states = None, []
    for name, value in headers:
        if name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"tracestate":
            states.append(value.decode("latin-1"))
    return traceparent, ",".join(states) or None


class _Response:
    """Passes the response's messages on, noting its status and request id, with a `response` span
    open from the first message to the last body chunk."""

    def __init__(self, request_span: Any, send: Send) -> None:
        self.request_span, self._send = request_span, send
        self.status: int | None = None
        self.request_id: str | None = None
        self.span: Any = None
        self.bytes = 0

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name.lower() == b"x-request-id":  # set by the observability middleware, inside this one
                    self.request_id = value.decode("latin-1")
            self.span = tracing.start_span("response", self.request_span)
        elif kind == "http.response.body":
            self.bytes += len(message.get("body", b""))
        await self._send(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            self.close()

    def close(self) -> None:
        """End the `response` span (at the last chunk, or when the app stops before it)."""
        if self.span is not None:
            self.span.set_attribute("http.response.body.size", self.bytes)
            self.span.end()
            self.span = None


def _finish(span: Any, scope: Scope, response: _Response) -> None:
    """Name the request span by its route, now that routing has put it in the scope, and add the answer."""
    if span is None:  # tracing was turned off after this app was built
        return
    attributes: dict[str, Any] = {}
    route = getattr(scope.get("route"), "path", None)
    if route is not None:
        span.update_name(f"{scope['method']} {route}")
        attributes["http.route"] = route
    if response.request_id is not None:
        attributes["vae.request_id"] = response.request_id
    if response.status is not None:  # none: the client left before an answer (counted as 499 in the metrics)
        attributes["http.response.status_code"] = response.status
        if response.status >= 500:  # a client's 4xx is not the server's error (OpenTelemetry's HTTP conventions)
            tracing.set_error(span, f"HTTP {response.status}")
    span.set_attributes(attributes)
