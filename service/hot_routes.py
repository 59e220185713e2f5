"""The hot routes' short way through the app: /encode at its three addresses and the open inference
protocol's infer.

Starlette and FastAPI spend, per request, more than these routes need: five layers of middleware
each wrapping the request's `send`, the exception middleware's wrapper, the router's scan of the
routes' regular expressions in order, FastAPI's request handler (dependency solving, exit stacks, its
body-size middleware). The hot routes' endpoints take the request and nothing else and return a
finished Response, so none of that changes their answer.

The route is never matched here: the first request to a (method, path) goes through the framework as
every other request does, and when the framework's router took it to a hot endpoint, the route and
path parameters it chose are remembered for that (method, path) (`HotTable`). Later requests to it
are taken one of two short ways:

- `ShortWay`, in front of the whole app (`service.app.ServiceApp`), for a body with a Content-Length
  within the limit while upload slots are free: the observability middleware's own code (ids,
  metrics, access log, the 500) around the limits middleware's upload slots and deadline
  (service/limits.py: UploadSlots) around the endpoint, whose exceptions the app's own handlers map.
  What the other middleware adds, the wrapping of each request's `send` and `receive` and the
  framework's exception middleware, is not done. It is off when CORS or tracing is configured:
  their middleware would have to see the request.
- `HotRoutes`, the innermost middleware, for the others: the framework's outer layers (ids, metrics,
  limits, CORS, spans) see them, and the router and request handler are skipped.

The routes stay registered with the framework, so /openapi.json does not change.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.limits import UploadSlots, body_length
from service.observability import Answers, ObservabilityMiddleware

Handler = Callable[[Request, Exception], Any]
Endpoint = Callable[[Request], Awaitable[Response]]
Found = tuple[Any, Endpoint, dict[str, Any]]  # the route, its endpoint and the path parameters the router gave it
FOUND = "vae.hot_route"  # the scope's key for what ShortWay found, until the endpoint is called
CACHE_SIZE = 1024  # paths remembered; the paths carry client-chosen names, so the memory is bounded


class HotTable:
    """Where the framework's router took each (method, path) that reached a hot endpoint, and how a hot
    endpoint's request is answered without the framework."""

    def __init__(self, hot: Collection[Callable[..., Any]], handlers: Callable[[], Mapping[Any, Handler]]) -> None:
        """`hot`: the endpoints taken the short way; `handlers`: the app's exception handlers (by exception
        class or status code), read when needed, as the app registers them after its middleware."""
        self.hot, self._handlers = frozenset(hot), handlers
        self.found: dict[tuple[str, str], Found] = {}

    def learn(self, key: tuple[str, str], scope: Scope) -> None:
        """Remember where the framework's router took this (method, path), when it was a hot endpoint."""
        endpoint, route = scope.get("endpoint"), scope.get("route")
        # the router also names the endpoint of a route that matched the path but not the method (its 405)
        if endpoint not in self.hot or key[0] not in getattr(route, "methods", ()):
            return
        if len(self.found) >= CACHE_SIZE:
            self.found.clear()
        self.found[key] = (route, endpoint, dict(scope.get("path_params", {})))

    async def answer(self, found: Found, scope: Scope, receive: Receive, send: Send) -> Response:
        """The endpoint's response, or the one the app's handlers make of its exception (a bare
        Exception is raised: that one is a 500, made further out)."""
        route, endpoint, path_params = found
        scope["route"], scope["endpoint"], scope["path_params"] = route, endpoint, dict(path_params)
        request = Request(scope, receive, send)
        try:
            return await endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
            return response  # type: ignore[no-any-return]  # the handlers return Responses

    def _handler(self, exc: Exception) -> Handler | None:
        """The handler Starlette's exception middleware would call: by status code for an HTTPException,
        else by the nearest class; none for a bare Exception."""
        handlers = self._handlers()
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None


class HotRoutes:
    """The innermost middleware: learns the hot routes, and takes the ones it knows past the router."""

    def __init__(self, app: ASGIApp, table: HotTable) -> None:
        self.app, self.table = app, table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = (scope["method"], scope["path"])
        found = self.table.found.get(key)
        if found is None:
            await self.app(scope, receive, send)
            self.table.learn(key, scope)
            return
        response = await self.table.answer(found, scope, receive, send)
        await response(scope, receive, send)


class ShortWay:
    """The hot routes' requests whose body fits, answered in front of the app's middleware with the
    same ids, limits, errors and metrics (see the module's docstring): the observability middleware's
    own code around the limits' upload slots around the endpoint."""

    def __init__(self, table: HotTable, slots: UploadSlots, answers: Answers) -> None:
        """`slots` and `answers`: the limits and observability middleware's own."""
        self.table, self.slots = table, slots
        self.observed = ObservabilityMiddleware(self._limited, answers.metrics, answers=answers)

    def takes(self, scope: Scope) -> Found | None:
        """What to call for this request, when it can go the short way."""
        found = self.table.found.get((scope["method"], scope["path"]))
        if found is None:
            return None
        length, slots = body_length(scope), self.slots
        # a chunked body (0), or one the limits refuse (413, 429): through the middleware, which answers
        return found if length and length <= slots.max_body and not slots.full() else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, found: Found) -> None:
        scope[FOUND] = found
        await self.observed(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.slots.run(self._answer, scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.table.answer(scope.pop(FOUND), scope, receive, send)
        await response(scope, receive, send)
