"""The guarded uvicorn protocol over a fake transport: header limits, the idle timer, lingering close."""

import asyncio
import json

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service import transport as guarded
from service.settings import Settings

pytestmark = pytest.mark.anyio


class FakeTransport:
    def __init__(self) -> None:
        self.written, self.eof, self.closing = b"", False, False
        self.writes: list[bytes] = []  # each write, as the socket would get it
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.closing = True
        self.closed.set()

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def connection(monkeypatch, app=ok_app, **limits):
    settings = Settings(**{"header_timeout_s": 0.05, "max_header_bytes": 1000, "max_headers": 10, **limits})
    monkeypatch.setattr(guarded, "_settings", lambda: settings)
    monkeypatch.setattr(guarded, "LINGER_S", 0.05)
    config = Config(app=app, lifespan="off", log_level="warning")
    config.load()
    protocol = guarded.GuardedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    fake = FakeTransport()
    protocol.connection_made(fake)
    return protocol, fake


def status_and_error(written: bytes) -> tuple[int, str]:
    head, _, body = written.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), json.loads(body)["error"]["code"]


@pytest.mark.parametrize(
    "headers",
    [b"".join(b"X-%d: 1\r\n" % i for i in range(11)), b"X-Big: " + b"a" * 1000 + b"\r\n"],
    ids=["count", "size"],
)
async def test_headers_over_the_limit_get_431_then_a_lingering_close(monkeypatch, headers):
    protocol, fake = connection(monkeypatch)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_and_error(fake.written) == (431, "headers_too_large")
    assert fake.eof and not fake.closing  # half-closed, draining
    protocol.data_received(b"more bytes the client sent")  # discarded, not parsed
    async with asyncio.timeout(5):
        await fake.closed.wait()


async def test_a_connection_that_never_completes_its_headers_is_closed_after_the_header_timeout(monkeypatch):
    protocol, fake = connection(monkeypatch)
    began = asyncio.get_running_loop().time()
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    async with asyncio.timeout(5):
        await fake.closed.wait()
    assert asyncio.get_running_loop().time() - began >= 0.05 and fake.written == b""


async def test_a_complete_request_is_answered_and_the_connection_kept_until_idle(monkeypatch):
    protocol, fake = connection(monkeypatch)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        await fake.closed.wait()  # by the idle timer, after the answer
    assert fake.written.startswith(b"HTTP/1.1 200") and fake.written.endswith(b"ok") and not fake.eof


async def test_a_parser_error_is_a_json_400(monkeypatch):
    protocol, fake = connection(monkeypatch)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    assert status_and_error(fake.written) == (400, "invalid_http")


async def streamed_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"ab", "more_body": True})
    await send({"type": "http.response.body", "body": b"cd"})


async def failing_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    raise RuntimeError("the app failed after starting its answer")


async def answered(protocol, fake, request: bytes) -> None:
    protocol.data_received(request)
    async with asyncio.timeout(5):
        while protocol.cycle is None or not (protocol.cycle.response_complete or fake.closing):
            await asyncio.sleep(0)


async def test_a_response_whose_body_is_one_message_leaves_in_one_write(monkeypatch):
    protocol, fake = connection(monkeypatch)
    await answered(protocol, fake, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (
        len(fake.writes) == 1 and fake.writes[0].startswith(b"HTTP/1.1 200") and fake.writes[0].endswith(b"\r\n\r\nok")
    )
    await answered(protocol, fake, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the next request on the connection too
    assert len(fake.writes) == 2 and fake.writes[1] == fake.writes[0]


async def test_a_head_answer_writes_its_head_though_no_body_is_written(monkeypatch):
    protocol, fake = connection(monkeypatch)
    await answered(protocol, fake, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(fake.writes) == 1 and fake.writes[0].startswith(b"HTTP/1.1 200") and fake.writes[0].endswith(b"\r\n\r\n")


async def test_a_streamed_body_goes_out_with_the_head_first_then_chunk_by_chunk(monkeypatch):
    protocol, fake = connection(monkeypatch, app=streamed_app)
    await answered(protocol, fake, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(fake.writes) == 2 and fake.writes[0].endswith(b"\r\n\r\nab") and fake.writes[1] == b"cd"


async def test_an_app_failing_after_its_head_has_the_head_written_before_the_close(monkeypatch):
    protocol, fake = connection(monkeypatch, app=failing_app)
    await answered(protocol, fake, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert fake.closing and len(fake.writes) == 1 and fake.writes[0].startswith(b"HTTP/1.1 200")
