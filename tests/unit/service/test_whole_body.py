"""A hot route's request whose whole body came with its headers is answered by the HTTP protocol with no
ASGI messages (service/transport.py: _WholeBodyCycle, service/hot_routes.py: ShortWay.answer_whole). Over
real sockets, against uvicorn serving the app with the guarded protocol: every answer is the framework's,
byte for byte apart from the request id; the way is really taken, and not taken for a body that arrives
after its request's task has started; ids, metrics, the generic 500, a client gone, keep-alive,
`Connection: close` and pipelined requests are what the ASGI ways give."""

import asyncio
import logging
import socket
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from service import app as app_module
from service.transport import GuardedHttpToolsProtocol
from tests.unit.service.conftest import PNG, build, png_bytes
from tests.unit.service.test_hot_routes import REQUESTS

pytestmark = pytest.mark.anyio

DEFAULT_HEADERS = [(b"date", b"Mon, 07 Dec 2026 00:00:00 GMT"), (b"server", b"uvicorn")]
POSTS = [(method, path, kwargs) for method, path, kwargs in REQUESTS if method == "POST"]


@asynccontextmanager
async def serving(app):
    """`app` served by uvicorn with the guarded protocol on a free port of this event loop: its address (the
    server as `serving.server`, for its connections)."""
    config = uvicorn.Config(
        app, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning", access_log=False, proxy_headers=False
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # what Server.serve sets before its startup
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    await server.startup(sockets=[listener])
    server.server_state.default_headers = list(DEFAULT_HEADERS)
    serving.server = server
    try:
        yield listener.getsockname()
    finally:
        server.should_exit = True
        await server.shutdown(sockets=[listener])
        listener.close()


def raw_request(method: str, path: str, headers: dict[str, str] | None = None, **kwargs) -> bytes:
    """The request as httpx would send it, as one piece of bytes."""
    request = httpx.Request(method, "http://test" + path, headers=headers, **kwargs)
    body = request.read()
    head = f"{method} {request.url.raw_path.decode()} HTTP/1.1\r\n".encode()
    head += b"".join(name + b": " + value + b"\r\n" for name, value in request.headers.raw)
    return head + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    length = int(next(value for name, value in headers if name == b"content-length"))
    return int(lines[0].split()[1]), headers, await reader.readexactly(length)


def comparable(answer) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status, headers, body = answer
    return status, [(name, value) for name, value in headers if name != b"x-request-id"], body


async def exchange(address, *pieces: bytes, count: int = 1) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    """Send each piece in one write (waiting for nothing between them), read `count` responses."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        return [await read_response(reader) for _ in range(count)]
    finally:
        writer.close()


class Watched:
    """The app's short way, with each way it answers by counted (and the ASGI one signalled)."""

    def __init__(self, app) -> None:
        self.inner, self.whole, self.asgi, self.asgi_started = app.short_way, 0, 0, asyncio.Event()
        app.short_way = self

    def takes(self, scope):
        return self.inner.takes(scope)

    async def answer_whole(self, *args) -> None:
        self.whole += 1
        await self.inner.answer_whole(*args)

    async def __call__(self, *args) -> None:
        self.asgi += 1
        self.asgi_started.set()
        await self.inner(*args)


@pytest.fixture
def reference(monkeypatch):
    with monkeypatch.context() as patched:  # no hot endpoint: every request through the framework
        patched.setattr(app_module, "HOT_ENDPOINTS", ())
        app, _ = build()
    return app


@pytest.mark.parametrize(("method", "path", "kwargs"), POSTS, ids=[f"{m} {p}" for m, p, _ in POSTS])
async def test_a_whole_body_is_answered_by_the_protocol_as_the_framework_answers(reference, method, path, kwargs):
    app, _ = build()
    watched = Watched(app)
    request = raw_request(method, path, **kwargs)
    async with serving(app) as hot, serving(reference) as framework:
        [expected] = await exchange(framework, request)
        [first] = await exchange(hot, request)  # through the framework: the route is learned
        [second] = await exchange(hot, request)
    assert comparable(first) == comparable(expected) and comparable(second) == comparable(expected)
    assert second[1][:2] == DEFAULT_HEADERS  # uvicorn's default headers first, as its own send writes them
    assert len(dict(second[1])[b"x-request-id"]) == 32  # a fresh id, as the middleware gives
    # an empty body has no Content-Length to take the short way with: the limits middleware answers it
    assert watched.whole == (0 if kwargs.get("content", True) == b"" else 1)
    assert watched.asgi == 0


async def test_a_body_arriving_after_its_task_started_goes_the_asgi_way_with_the_same_answer():
    app, _ = build()
    watched = Watched(app)
    request = raw_request("POST", "/encode", content=png_bytes(0), headers=PNG)
    head, body = request[: -len(png_bytes(0)) + 10], request[-len(png_bytes(0)) + 10 :]
    async with serving(app) as address:
        _, whole = await exchange(address, request, request, count=2)  # learned, then whole
        assert (watched.whole, watched.asgi) == (1, 0)
        reader, writer = await asyncio.open_connection(*address)
        writer.write(head)  # the headers and 10 bytes of the body: the task starts, waiting for the rest
        await writer.drain()
        await watched.asgi_started.wait()
        writer.write(body)
        split = await read_response(reader)
        writer.close()
    assert (watched.whole, watched.asgi) == (1, 1)
    assert comparable(split) == comparable(whole)


async def test_request_ids_and_metrics_are_kept_on_the_whole_way():
    app, _ = build()
    watched = Watched(app)
    requests = [
        raw_request(
            "POST", "/v1/models/fake-vae/encode", content=png_bytes(0), headers={**PNG, "X-Request-ID": f"r{i}"}
        )
        for i in range(3)
    ]
    async with serving(app) as address:
        answers = await exchange(address, *requests, count=3)  # one connection, kept alive
        [(_, _, metrics)] = await exchange(address, raw_request("GET", "/metrics"))
    assert [dict(headers)[b"x-request-id"] for _, headers, _ in answers] == [b"r0", b"r1", b"r2"]
    assert watched.whole == 2
    line = 'vae_requests_total{method="POST",route="/v1/models/{name}/encode",status="200"} 3.0'
    assert line in metrics.decode()


async def test_pipelined_requests_and_connection_close_are_honoured():
    app, _ = build()
    Watched(app)
    plain = raw_request("POST", "/encode", content=png_bytes(0), headers=PNG)
    closing = raw_request("POST", "/encode", content=png_bytes(1), headers={**PNG, "Connection": "close"})
    async with serving(app) as address:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(plain + plain + closing)  # three requests in one write: two queued behind the first
        answers = [await read_response(reader) for _ in range(3)]
        assert await reader.read() == b""  # closed after the third, as it asked
        writer.close()
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert answers[0][2] == answers[1][2] != answers[2][2]
    assert (b"connection", b"close") in answers[2][1] and all(name != b"connection" for name, _ in answers[1][1])


async def test_an_error_outside_the_handlers_is_the_generic_500_with_the_request_id(monkeypatch, caplog):
    app, _ = build()
    watched = Watched(app)
    request = raw_request("POST", "/encode", content=png_bytes(0), headers={**PNG, "X-Request-ID": "boom-1"})
    async with serving(app) as address:
        await exchange(address, request)  # learned
        table = watched.inner.table
        route, _, params = table.found[("POST", "/encode")]

        async def failing(request):
            raise RuntimeError("a bug in the endpoint")

        table.found[("POST", "/encode")] = (route, failing, params)
        with caplog.at_level(logging.ERROR):
            [(status, headers, body)] = await exchange(address, request)
        [(_, _, metrics)] = await exchange(address, raw_request("GET", "/metrics"))
    assert status == 500 and dict(headers)[b"x-request-id"] == b"boom-1"
    assert b'"internal_error"' in body and b"a bug" not in body
    assert any("a bug in the endpoint" in (r.exc_text or "") for r in caplog.records)
    assert 'route="/encode",status="500"} 1.0' in metrics.decode()


async def test_a_client_gone_before_its_answer_counts_499_and_gets_nothing(monkeypatch):
    app, _ = build()
    watched = Watched(app)
    request = raw_request("POST", "/encode", content=png_bytes(0), headers=PNG)
    async with serving(app) as address:
        await exchange(address, request)  # learned
        table = watched.inner.table
        route, endpoint, params = table.found[("POST", "/encode")]
        entered, release = asyncio.Event(), asyncio.Event()

        async def held(request):
            entered.set()
            await release.wait()
            return await endpoint(request)

        table.found[("POST", "/encode")] = (route, held, params)
        _, writer = await asyncio.open_connection(*address)
        writer.write(request)
        await entered.wait()
        writer.close()
        await writer.wait_closed()
        connections = serving.server.server_state.connections
        for _ in range(10_000):  # the loop's turns until the server's end has seen the close
            if not connections:
                break
            await asyncio.sleep(0)
        assert not connections
        release.set()
        [(_, _, metrics)] = await exchange(address, raw_request("GET", "/metrics"))
    assert 'route="/encode",status="499"} 1.0' in metrics.decode()
