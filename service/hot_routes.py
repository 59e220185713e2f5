"""The hot routes' short way through the app: /encode at its three addresses and the open inference
protocol's infer, called straight from the innermost middleware.

Starlette and FastAPI spend, per request, more than these routes need: the exception middleware's
wrapper, the router's scan of the routes' regular expressions in order, FastAPI's request handler
(dependency solving, exit stacks, its body-size middleware). The hot routes' endpoints take the request
and nothing else and return a finished Response, so none of that changes their answer.

The route is never matched here: the first request to a (method, path) goes through the framework as
every other request does, and when the framework's router took it to a hot endpoint, the route and
path parameters it chose are remembered for that (method, path). Later requests to it call the endpoint
with the same Request, turn an exception into a response with the app's own exception handlers, and send
the response. Anything else goes through the framework as before, and the routes stay registered there,
so /openapi.json does not change.

It is the innermost of the app's middleware: request ids, metrics, the body limits and CORS still see
every request (service/app.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request, Exception], Any]
Endpoint = Callable[[Request], Awaitable[Response]]
CACHE_SIZE = 1024  # paths remembered; the paths carry client-chosen names, so the memory is bounded


class HotRoutes:
    def __init__(
        self,
        app: ASGIApp,
        hot: Collection[Callable[..., Any]],
        handlers: Callable[[], Mapping[Any, Handler]],
    ) -> None:
        """`hot`: the endpoints taken the short way; `handlers`: the app's exception handlers (by exception
        class or status code), read when needed, as the app registers them after its middleware."""
        self.app, self._hot, self._handlers = app, frozenset(hot), handlers
        # (method, path) -> the route, its endpoint and the path parameters the router gave it
        self._found: dict[tuple[str, str], tuple[Any, Endpoint, dict[str, Any]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = (scope["method"], scope["path"])
        found = self._found.get(key)
        if found is None:
            await self.app(scope, receive, send)
            self._learn(key, scope)
            return
        route, endpoint, path_params = found
        scope["route"], scope["endpoint"], scope["path_params"] = route, endpoint, dict(path_params)
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)

    def _learn(self, key: tuple[str, str], scope: Scope) -> None:
        """Remember where the framework's router took this (method, path), when it was a hot endpoint."""
        endpoint, route = scope.get("endpoint"), scope.get("route")
        # the router also names the endpoint of a route that matched the path but not the method (its 405)
        if endpoint not in self._hot or key[0] not in getattr(route, "methods", ()):
            return
        if len(self._found) >= CACHE_SIZE:
            self._found.clear()
        self._found[key] = (route, endpoint, dict(scope.get("path_params", {})))

    def _handler(self, exc: Exception) -> Handler | None:
        """The handler Starlette's exception middleware would call: by status code for an HTTPException,
        else by the nearest class; none for a bare Exception (that one is a 500, made further out)."""
        handlers = self._handlers()
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None
