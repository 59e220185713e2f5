"""Limits on request bodies, as one pure-ASGI middleware: the size limit (413), upload admission
(429), the body deadline (408), and client aborts, which it reports as `ClientGone`.

It runs inside `ObservabilityMiddleware`, which gives each answer its request id and counts it.
Pure ASGI (not BaseHTTPMiddleware): a request without a body costs one header scan here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Generator
from typing import Any

from fastapi import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ShapeResolver, error_bytes, native_shape, send_error

CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first
log = logging.getLogger("vae.service")


class ClientGone(Exception):
    """The client closed the connection before its request was answered: nothing was sent, and the
    request counts as CLIENT_CLOSED."""


class BodyTimeout(HTTPException):
    """The body did not arrive in time. An HTTPException, so FastAPI's JSON body parsing lets it
    through to the error layer as it is; Connection: close, as the client may still be sending."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", headers={"Connection": "close"})


class BodyTooLarge(HTTPException):
    """A chunked body past the limit (it has no Content-Length to check first)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes", headers={"Connection": "close"})


class UploadSlots:
    """The bodies being received now, their limits, and the one sweeper that times out those past their
    deadline. Shared by the limits middleware and the hot routes' short way (service/hot_routes.py),
    which receives its bodies under the same slots, limit and deadline."""

    def __init__(self, max_body: int, max_uploads: int, body_timeout_s: float) -> None:
        self.max_body, self.max_uploads, self.body_timeout_s = max_body, max_uploads, body_timeout_s
        self.bodies: set[_Body] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def full(self) -> bool:
        return len(self.bodies) >= self.max_uploads

    def receiving(self, receive: Receive, send: Send) -> _Body:
        """A body to receive under a slot (released at its last byte or by `_Body.release`)."""
        body = _Body(self, receive, send)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return body

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """`app` with the request's body received under a slot; `ClientGone` when the client left first."""
        body = self.receiving(receive, send)
        try:
            await app(scope, body.receive, body.send)
        except Exception as exc:
            if isinstance(exc, ClientDisconnect) or body.disconnected:
                raise client_gone(scope) from None
            raise
        finally:
            body.release()
        if body.disconnected:  # the app answered (a 400, say) a client that had gone: nothing was sent
            raise client_gone(scope)

    async def _sweep(self) -> None:
        """Times out bodies past their deadline, checking every `tick`; runs while any is being received.
        One sweeper instead of a timer per receive: a timer per request (asyncio.timeout_at) would cost
        more than the rest of the middleware (docs/design/serving-measurements.md)."""
        tick = min(1.0, self.body_timeout_s / 10)
        try:
            while self.bodies:
                await asyncio.sleep(tick)
                now = time.monotonic()
                for body in [body for body in self.bodies if body.deadline <= now]:
                    body.expire()
        finally:
            self._sweeper = None


class RequestLimitsMiddleware:
    """Refuses a body over `max_body` before reading it (413), a body beyond `max_uploads` being received
    at once (429), gives each body a deadline (408), and turns a client abort into one log line and
    `ClientGone`, with nothing sent. `slots`: shared with the hot routes' short way (else its own)."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Any,  # service.observability.Metrics: its `rejected` counter
        max_body: int = 0,
        max_uploads: int = 0,
        body_timeout_s: float = 0.0,
        shape_of: ShapeResolver = native_shape,
        slots: UploadSlots | None = None,
    ) -> None:
        self.app, self.metrics, self.shape_of = app, metrics, shape_of
        self.slots = slots or UploadSlots(max_body, max_uploads, body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = body_length(scope) if scope["type"] == "http" else None
        if length is None:
            try:
                await self.app(scope, receive, send)
            except ClientDisconnect:
                raise client_gone(scope) from None
            return
        slots = self.slots
        if length > slots.max_body:  # before a byte of the body is read
            message = f"request body exceeds the limit of {slots.max_body} bytes"
            await self._refuse(scope, send, 413, "payload_too_large", message, (b"connection", b"close"))
        elif slots.full():
            self.metrics.rejected.inc()
            message = f"more than {slots.max_uploads} uploads in progress; retry shortly"
            await self._refuse(scope, send, 429, "overloaded", message, (b"retry-after", b"1"))
        else:
            await slots.run(self.app, scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, message: str, header: Any) -> None:
        await send_error(send, status, error_bytes(code, message, self.shape_of(scope["path"])), header)


def client_gone(scope: Scope) -> ClientGone:
    """The client closed the connection first: one log line, and the exception that says so."""
    log.info("client disconnected before its request was answered: %s %s", scope["method"], scope["path"])
    return ClientGone()


class _Body:
    """A request body being received: it holds an upload slot until its last byte (or the end of the
    request); a receive still waiting at the deadline is cancelled by the sweeper and raises 408.
    Once the client has gone, what the app sends is dropped: nobody is there to read it."""

    __slots__ = ("deadline", "disconnected", "expired", "holding", "inner", "outer", "owner", "received", "waiting")

    def __init__(self, owner: UploadSlots, receive: Receive, send: Send) -> None:
        self.owner, self.inner, self.outer = owner, receive, send
        self.deadline = time.monotonic() + owner.body_timeout_s
        self.received, self.holding, self.disconnected, self.expired = 0, True, False, False
        self.waiting: asyncio.Task[Any] | None = None
        owner.bodies.add(self)

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self.owner.bodies.discard(self)

    def expire(self) -> None:
        if self.waiting is not None and not self.expired:
            self.expired = True
            self.waiting.cancel()

    async def send(self, message: Message) -> None:
        if not self.disconnected:
            await self.outer(message)

    async def receive(self) -> Message:
        if not self.holding:  # the body is in: what is left is waiting for a disconnect
            message = await self.inner()
            self.disconnected = self.disconnected or message["type"] == "http.disconnect"
            return message
        if time.monotonic() >= self.deadline:  # past it while busy between receives
            self.release()
            raise BodyTimeout(self.owner.body_timeout_s)
        message = await self._wait()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.owner.max_body:
                self.release()
                raise BodyTooLarge(self.owner.max_body)
            if not message.get("more_body", False):
                self.release()
        else:
            self.disconnected = True
            self.release()
        return message

    async def _wait(self) -> Message:
        """The next message, unless the sweeper cancels the wait at the deadline: then 408."""
        try:
            message: Message = await _Receiving(self, self.inner())
            return message
        except asyncio.CancelledError:
            if not self.expired or self.waiting is None:
                raise
            self.waiting.uncancel()
            self.release()
            raise BodyTimeout(self.owner.body_timeout_s) from None
        finally:
            self.waiting = None


class _Receiving:
    """Awaits a receive, as `await` would; only when it has to wait (the body is not all in yet) does
    it name the task that waits, for the sweeper to cancel at the deadline. Most bodies are in before
    the app asks, and their receive never waits, so most requests never look their task up (in this
    Python, each `asyncio.current_task()` asks the kernel for the process id)."""

    __slots__ = ("awaitable", "body")

    def __init__(self, body: _Body, awaitable: Awaitable[Message]) -> None:
        self.body, self.awaitable = body, awaitable

    def __await__(self) -> Generator[Any, Any, Message]:
        steps = self.awaitable.__await__()
        try:
            signal = steps.send(None)
        except StopIteration as done:  # the message was there: no wait
            message: Message = done.value
            return message
        self.body.waiting = asyncio.current_task()
        while True:  # what `yield from steps` does, from its second step on
            try:
                sent = yield signal
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # a cancellation (the deadline's, or the server's), thrown in
                try:
                    signal = steps.throw(exc)
                except StopIteration as done:
                    message = done.value
                    return message
            else:
                try:
                    signal = steps.send(sent)
                except StopIteration as done:
                    message = done.value
                    return message


def body_length(scope: Scope) -> int | None:
    """The declared body length; 0 for a chunked body (counted as it arrives); None without a body.
    (The server has already refused a malformed or contradictory Content-Length with 400.)"""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else 0
        elif name == b"transfer-encoding":
            return 0
    return length or None
