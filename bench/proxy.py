"""A round-robin TCP proxy for the scale-out benchmark (bench/scaleout.py): one address in front of
several replicas, as a Kubernetes Service is in front of its pods.

    python -m bench.proxy --port 9000 --backend 127.0.0.1:8001 --backend 127.0.0.1:8002

Each new client connection goes to the next backend in turn and stays there, as kube-proxy balances
(per connection, not per request). Bytes are copied both ways with flow control: a side whose peer
cannot take more is paused. uvloop, as uvicorn uses, so the proxy costs as little CPU as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from typing import Any

HIGH_WATER = 256 * 1024  # bytes buffered towards a slow peer before the other side is paused


class _Side(asyncio.Protocol):
    """One socket of a proxied pair; what it receives is written to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # received before the peer's connection is up

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:  # our peer sends faster than this socket drains
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Client(_Side):
    def __init__(self, backends: itertools.cycle) -> None:
        super().__init__()
        self.backends = backends

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # until the backend connection is up
        asyncio.get_running_loop().create_task(self._connect(*next(self.backends)))

    async def _connect(self, host: str, port: int) -> None:
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(_Side, host, port)
        except OSError:
            self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        if self.transport.is_closing():
            upstream.transport.close()
            return
        for data in self.pending:
            upstream.transport.write(data)
        self.pending.clear()
        self.transport.resume_reading()


async def serve(port: int, backends: list[tuple[str, int]]) -> None:
    cycle = itertools.cycle(backends)
    server = await asyncio.get_running_loop().create_server(lambda: _Client(cycle), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def parse_backend(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.proxy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", action="append", type=parse_backend, required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # the standard loop works, only slower
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    try:
        runner(serve(args.port, args.backend))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
