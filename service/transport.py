"""uvicorn's httptools protocol with limits on request headers.

uvicorn 0.54 bounds neither the time a client may take to send its headers nor their size:
measured with raw sockets, "GET / HTTP/1.1\\r\\nHost: x\\r\\n" and then nothing stays open for good
(with httptools and h11 alike: the keep-alive timer is armed only after a response, and any byte
disarms it), and httptools answers a 1 MB header or 100,000 headers with 200. An ASGI app sees
nothing until the headers are complete, so the limits live here, in the protocol:

- the request line and headers must arrive within `header_timeout_s` of the connection opening
  or of the previous response, else the connection is closed (so is one that keeps sending a
  body after its answer);
- past `max_header_bytes` or `max_headers` the client gets 431 and the connection is closed;
- a Transfer-Encoding other than exactly `chunked` (`identity, chunked`, `gzip, chunked`, two of
  the header) gets 400: the service decodes no other coding, and a proxy that reads such a header
  otherwise than httptools does is how requests are smuggled;
- a response goes out in one write when its body is one message (every JSON or PNG answer): uvicorn
  writes the status line and headers as soon as the app starts its response, and the body after, two
  system calls and two TCP segments where one does;
- a chunked body may spend on framing (chunk sizes, extensions, line ends) at most Go's budget since
  CVE-2023-39326: 16 bytes a chunk plus twice the data, beyond 16 KiB; past it, 400 and the connection
  is closed. httptools skips chunk extensions without counting them, so 100 MiB of `;x=aaa...` before
  one chunk was read in full, and the body's byte limit never saw it.

`vae-serve` passes this class to uvicorn; run by hand, name it: `uvicorn --http
service.transport:GuardedHttpToolsProtocol --factory service.app:app_factory`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.errors import error_bytes
from service.settings import Settings, load_settings

log = logging.getLogger("vae.transport")
LINGER_S = 1.0
Buffer = bytes | bytearray | memoryview
CHUNK_OVERHEAD_BYTES = 16  # framing each chunk may spend, beyond twice its data (Go's net/http)
MAX_EXCESS_FRAMING = 16 * 1024


@functools.cache
def _settings() -> Settings:
    return load_settings()


def _rejection(status: str, code: str, message: str) -> bytes:
    """A whole HTTP response, written straight to the transport: the request never reached the app,
    so the service's own shape (no path is known for sure while the headers are refused)."""
    body = error_bytes(code, message)
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class _LingeringTransport:
    """The connection's transport, but a close while the client may still be sending (a 408 or 413
    mid-body, a refused request) half-closes and drains for LINGER_S first: closing with unread bytes
    sends a reset, which can destroy the answer before the client reads it."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol) -> None:
        self._transport, self._protocol, self._lingering = transport, protocol, False
        self._held: bytes | None = None  # a response's head, waiting for its body (hold_next_write)
        # the calls made per request go straight to the real transport
        self.write, self.get_extra_info = transport.write, transport.get_extra_info
        self.pause_reading, self.resume_reading = transport.pause_reading, transport.resume_reading

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def hold_next_write(self) -> None:
        """The next write (a response's status line and headers) waits, and goes out with the write
        after it (the body) or at `flush`, whichever comes first."""
        self.write = self._hold

    def _hold(self, data: Buffer) -> None:
        self._held = bytes(data)
        self.write = self._write_with_held

    def _write_with_held(self, data: Buffer) -> None:
        held, self._held = self._held, None
        self.write = self._transport.write
        self._transport.write(b"".join((held, data)) if held is not None else data)

    def flush(self) -> None:
        """What is held goes now, and writes go straight through again."""
        held, self._held = self._held, None
        self.write = self._transport.write
        if held is not None and not self._transport.is_closing():  # a client gone: nobody to answer
            self._transport.write(held)

    def is_closing(self) -> bool:
        return self._lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self._lingering or transport.is_closing():
            return
        self.flush()
        if not self._protocol.client_may_be_sending() or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        self._protocol.discard_input()
        transport.write_eof()
        self._protocol.loop.call_later(LINGER_S, transport.close)


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, whose response head is held until the body's first write:
    a response whose body is one message leaves in one write. Whatever happens between (an exception,
    a disconnect, an empty body), the head is written before this send returns or the connection closes."""

    async def send(self, message: Any) -> None:
        transport = self.transport
        if not isinstance(transport, _LingeringTransport):
            await super().send(message)
            return
        if message["type"] == "http.response.start" and not self.response_started:
            transport.hold_next_write()
            try:
                await super().send(message)
            finally:
                if transport._held is None:  # nothing was written to hold (a disconnect, an invalid header)
                    transport.flush()
            return
        try:
            await super().send(message)
        finally:
            transport.flush()  # a HEAD answer's or an empty body's head, when no body was written


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = _settings()
        self.header_timeout_s = settings.header_timeout_s
        self.max_header_bytes, self.max_headers = settings.max_header_bytes, settings.max_headers
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers, self._rejected = True, False
        self._raw_header_bytes = self._header_bytes = self._header_count = 0
        self._chunked = False  # this request's body is chunked: its framing is counted
        self._transfer_encodings = 0
        self._raw_body_bytes = self._body_bytes = self._chunks = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._arm_idle_timer()

    def client_may_be_sending(self) -> bool:
        """A request refused mid-way, or a body not yet complete."""
        return self._rejected or (not self._awaiting_headers and self.cycle is not None and self.cycle.more_body)

    def discard_input(self) -> None:
        self._rejected = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:  # draining what the client still sends (see _LingeringTransport)
            return
        in_body = not self._awaiting_headers and self._chunked
        if self._awaiting_headers:
            self._raw_header_bytes += len(data)
        elif in_body:
            self._raw_body_bytes += len(data)
        super().data_received(data)
        # httptools holds a header until it is complete, so one huge header is caught here, by raw bytes
        if self._awaiting_headers and self._raw_header_bytes > self.max_header_bytes:
            self._reject_headers()
        # still in the same body (a message that completed reset the counts): its framing so far
        elif in_body and not self._awaiting_headers and self._excess_framing() > MAX_EXCESS_FRAMING:
            self._reject_body(
                "the chunked body spends too many bytes on framing (chunk extensions or sizes): "
                f"more than {MAX_EXCESS_FRAMING} bytes beyond 16 per chunk and twice the data"
            )

    def _excess_framing(self) -> int:
        framing = self._raw_body_bytes - self._body_bytes
        return framing - CHUNK_OVERHEAD_BYTES * self._chunks - 2 * self._body_bytes

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._header_count > self.max_headers or self._header_bytes > self.max_header_bytes:
            self._reject_headers()
        elif name.lower() == b"transfer-encoding":
            self._transfer_encodings += 1
            self._chunked = True
            if self._transfer_encodings > 1 or value.strip().lower() != b"chunked":
                self._reject_body(
                    "Transfer-Encoding must be exactly 'chunked' (once), or absent with a "
                    "Content-Length: no other transfer coding is accepted"
                )
        if not self._rejected:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._rejected:  # while these headers were parsed
            return
        self._awaiting_headers = False
        self._stop_header_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and type(cycle) is RequestResponseCycle:  # made just now, not yet started
            cycle.__class__ = _OneWriteCycle

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if not self._rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        super().on_message_complete()
        self._awaiting_headers = True  # the next request's, which may be pipelined
        self._raw_header_bytes = self._header_bytes = self._header_count = 0
        self._chunked, self._transfer_encodings = False, 0
        self._raw_body_bytes = self._body_bytes = self._chunks = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # also when the body is still arriving after an early answer (429, 404): uvicorn would
            # keep reading it, and disarm its keep-alive timer at every byte
            self._arm_idle_timer()

    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses (bad chunk sizes, a bad or doubled Content-Length, Content-Length
        with Transfer-Encoding): uvicorn's plain-text 400, in the service's JSON error shape."""
        self._rejected = True
        self._stop_header_timer()
        self.transport.write(_rejection("400 Bad Request", "invalid_http", msg))
        self.transport.close()

    def _arm_idle_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        """No request in progress for `header_timeout_s`: close. A request being answered (its
        headers complete; its body has the app's own deadline) keeps the connection."""
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_idle_timer()
            return
        self.transport.close()

    def _reject_body(self, message: str) -> None:
        """400 and close, for framing refused while the request is being read (its headers may be
        complete: the app, waiting for the body, is told the client is gone)."""
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        self._stop_header_timer()
        log.info("request refused: %s", message)
        cycle = self.cycle
        if cycle is not None and not self._awaiting_headers and not cycle.response_started:
            cycle.disconnected = True  # the app's receive() answers http.disconnect; it sends nothing
            cycle.message_event.set()
        elif cycle is not None and not self._awaiting_headers:  # the app has begun its answer: just close
            self.transport.close()
            return
        self.transport.write(_rejection("400 Bad Request", "invalid_http", message))
        self.transport.close()

    def _reject_headers(self) -> None:
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        self._stop_header_timer()
        log.info(
            "request headers over the limit (%d headers, %d bytes allowed); connection closed",
            self.max_headers,
            self.max_header_bytes,
        )
        self.transport.write(
            _rejection(
                "431 Request Header Fields Too Large",
                "headers_too_large",
                f"request headers exceed {self.max_headers} headers or {self.max_header_bytes} bytes",
            )
        )
        self.transport.close()
