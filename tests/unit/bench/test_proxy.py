"""bench/proxy.py: each new connection goes to the next backend in turn, and the bytes arrive whole
both ways, large ones too (flow control)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest

from bench.proxy import parse_backend, serve
from bench.servers import free_port

pytestmark = pytest.mark.anyio
PAYLOAD = bytes(range(256)) * 8192  # 2 MiB: more than the proxy buffers before pausing a side


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def backend(name: bytes) -> asyncio.Server:
    """Reads PAYLOAD's length in bytes, answers its name, the digest, and the bytes back."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(len(PAYLOAD))
        writer.write(name + b" " + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_connections_go_round_robin_and_bytes_arrive_whole():
    servers = [await backend(b"a"), await backend(b"b")]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    port = free_port()
    proxy = asyncio.create_task(serve(port, [("127.0.0.1", p) for p in ports]))
    try:
        answers = []
        for _ in range(4):
            for _attempt in range(100):  # until the proxy listens
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    break
                except OSError:
                    await asyncio.sleep(0.01)
            writer.write(PAYLOAD)
            await writer.drain()
            head = await reader.readline()
            echoed = await reader.readexactly(len(PAYLOAD))
            writer.close()
            answers.append((head.split()[0], head.split()[1].decode(), echoed == PAYLOAD))
        digest = hashlib.sha256(PAYLOAD).hexdigest()
        assert answers == [(b"a", digest, True), (b"b", digest, True)] * 2
    finally:
        proxy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await proxy
        for server in servers:
            server.close()


def test_a_backend_is_host_colon_port():
    assert parse_backend("127.0.0.1:8001") == ("127.0.0.1", 8001)
