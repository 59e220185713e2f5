"""Transport attacks against a real server over raw sockets: slow and stalled bodies, aborted
uploads, oversized headers, idle half-sent requests, chunked-encoding and Content-Length tricks,
pipelining. Every test runs beside a /healthz poller: no answer may wait over 1 s, no request may
get a 5xx, and the server is ready afterwards."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest

from model.core.preprocess import PreprocessContract, bytes_to_array
from tests.integration.conftest import HealthGuard, Server, png, status_counts

BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 1.0
MAX_UPLOAD_BYTES = 100_000
MAX_HEADER_BYTES = 16384


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("adversarial"),
        VAE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        VAE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        VAE_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        VAE_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        VAE_MAX_HEADERS="100",
    )
    with server:
        yield server


@pytest.fixture
def guarded(server):
    """Polls /healthz for the whole test; afterwards: never over 1 s, no 5xx counted, ready."""
    with HealthGuard(server.url):
        yield server


def connect(server, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (bounded by the socket timeout)."""
    data = b""
    for _ in range(10_000):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server kept sending")


def parse(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in `data`, in order: (status, headers, body); bodies by Content-Length."""
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        responses.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


def exchange(server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(server) as sock:
        sock.sendall(raw)
        [response] = parse(read_all(sock))
    return response


def error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error["code"]


def upload_head(path: str, length: int, content_type: str = "image/png") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


@contextmanager
def expected_encoding(test_images, local_model):
    image = png(test_images[0])
    mean = local_model.encode(bytes_to_array(image, PreprocessContract())[None])[0][0]
    yield image, mean


def test_64_slow_uploaders_do_not_starve_encode_and_each_gets_408(guarded, test_images, local_model):
    server = guarded
    uploaders, sending = 64, threading.Barrier(65, timeout=30)
    answers: list[bytes | str] = [b""] * uploaders

    def slow_uploader(i: int) -> None:
        try:
            paced_upload(i)
        except OSError as exc:  # reported with the answers below
            answers[i] = repr(exc)

    def paced_upload(i: int) -> None:
        with connect(server) as sock:
            sock.sendall(upload_head("/encode", 50_000))
            sock.sendall(b"x" * 100)
            sending.wait()
            data = b""
            for _ in range(int((BODY_TIMEOUT_S + 5) / 0.1)):  # 1 kB/s: 100 bytes every 0.1 s, bounded
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable:
                    data = read_all(sock)
                    break
                sock.sendall(b"x" * 100)
            answers[i] = data

    threads = [threading.Thread(target=slow_uploader, args=(i,), daemon=True) for i in range(uploaders)]
    for thread in threads:
        thread.start()
    sending.wait()  # every slow upload is under way
    with expected_encoding(test_images, local_model) as (image, mean), httpx.Client(base_url=server.url) as client:
        for _ in range(10):
            response = client.post("/encode", content=image, headers={"content-type": "image/png"}, timeout=5)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(response.json()["results"][0]["mean"], mean, rtol=1e-5, atol=1e-6)
    for thread in threads:
        thread.join(timeout=BODY_TIMEOUT_S + 10)
    for data in answers:
        assert isinstance(data, bytes) and data, data
        [(status, headers, body)] = parse(data)
        assert status == 408 and error_code(body) == "request_timeout" and headers["connection"] == "close"


def test_a_stalled_body_gets_408_at_the_deadline(guarded):
    with connect(guarded) as sock:
        began = time.monotonic()
        sock.sendall(upload_head("/encode", 1000) + b"\x89PNG")
        [(status, headers, body)] = parse(read_all(sock))
        waited = time.monotonic() - began
    assert status == 408 and error_code(body) == "request_timeout" and headers["x-request-id"]
    assert BODY_TIMEOUT_S - 0.1 < waited < BODY_TIMEOUT_S + 1.5


def test_a_stalled_json_body_on_decode_gets_408(guarded):
    status, _, body = exchange(guarded, upload_head("/decode", 500, "application/json") + b'{"z": [[0.1,')
    assert status == 408 and error_code(body) == "request_timeout"


@pytest.mark.parametrize(
    "extra",
    [
        b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n",  # one header too big
        b"".join(b"X-%d: 1\r\n" % i for i in range(150)),  # too many headers
        b"X-Huge: " + b"a" * 1_000_000 + b"\r\n",  # 1 MB, one header
        b"".join(b"X-%d: 1\r\n" % i for i in range(100_000)),  # 100,000 headers
    ],
    ids=["big", "many", "1MB", "100k"],
)
def test_oversized_headers_get_431_and_a_closed_connection(guarded, extra):
    status, headers, body = exchange(guarded, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    assert status == 431 and error_code(body) == "headers_too_large" and headers["connection"] == "close"


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"POST /enc"],
    ids=["silent", "half-headers", "half-request-line"],
)
def test_idle_connections_with_incomplete_headers_are_closed_within_the_header_timeout(guarded, first_bytes):
    with connect(guarded) as sock:
        began = time.monotonic()
        sock.sendall(first_bytes)
        assert read_all(sock) == b""
        waited = time.monotonic() - began
    assert HEADER_TIMEOUT_S - 0.1 < waited < HEADER_TIMEOUT_S + 1.0


def test_a_kept_alive_connection_that_half_sends_its_next_request_is_closed(guarded):
    with connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        for _ in range(100):
            first += sock.recv(4096)
            if first.endswith(b'{"status":"ok"}'):
                break
        began = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert read_all(sock) == b""
        waited = time.monotonic() - began
    assert parse(first)[0][0] == 200 and waited < HEADER_TIMEOUT_S + 1.0


def test_a_body_dribbled_after_an_early_answer_does_not_hold_the_connection(guarded):
    with connect(guarded) as sock:
        sock.sendall(upload_head("/nope", 50_000).replace(b"Connection: close\r\n", b"") + b"x" * 10)
        answer = b""
        for _ in range(100):
            answer += sock.recv(4096)
            if answer.endswith(b"}}"):
                break
        [(status, _, body)] = parse(answer)
        began, closed = time.monotonic(), False
        for _ in range(int((HEADER_TIMEOUT_S + 3) / 0.1)):  # 100 bytes/s of body nobody reads, bounded
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                closed = sock.recv(4096) == b""
                break
            sock.sendall(b"x" * 10)
        waited = time.monotonic() - began
    assert status == 404 and error_code(body) == "not_found"
    assert closed and waited < HEADER_TIMEOUT_S + 1.0


def test_64_aborted_uploads_are_one_log_line_each_and_counted_499(guarded):
    server = guarded
    before_log = server.log().count("\n")
    before = sum(status_counts(server.url, "499").values())
    for _ in range(64):
        with connect(server) as sock:
            sock.sendall(upload_head("/encode", 50_000) + b"x" * 1000)
    deadline = time.monotonic() + 10
    while sum(status_counts(server.url, "499").values()) < before + 64 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling /metrics for the condition, with a deadline
    assert sum(status_counts(server.url, "499").values()) == before + 64
    new_lines = server.log().splitlines()[before_log:]
    aborts = [line for line in new_lines if "client disconnected" in line]
    assert len(aborts) == 64 and len(new_lines) <= 70, new_lines[:20]
    assert not any("Traceback" in line or "Exception" in line for line in new_lines)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


def chunked_head(path: str = "/encode") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()


def test_a_chunked_body_over_the_limit_gets_413(guarded):
    status, _, body = exchange(guarded, chunked_head() + chunked(*[b"x" * 10_000] * 11))
    assert status == 413 and error_code(body) == "payload_too_large"
    assert str(MAX_UPLOAD_BYTES) in json.loads(body)["error"]["message"]


def test_a_chunked_image_is_served(guarded, test_images, local_model):
    with expected_encoding(test_images, local_model) as (image, mean):
        status, _, body = exchange(guarded, chunked_head() + chunked(image[:100], image[100:]))
    assert status == 200
    np.testing.assert_allclose(json.loads(body)["results"][0]["mean"], mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "raw",
    [
        chunked_head() + b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        chunked_head() + b"fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",  # overflows
        chunked_head() + b"3\r\nabcdef\r\n0\r\n\r\n",  # more data than the size says
        b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /encode HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ],
    ids=["not-hex", "overflow", "overlong-chunk", "cl-and-te", "negative-cl", "garbage-cl", "two-cl"],
)
def test_malformed_framing_gets_a_json_400_from_the_server(guarded, raw):
    status, headers, body = exchange(guarded, raw)
    assert status == 400 and error_code(body) == "invalid_http" and headers["connection"] == "close"


def test_pipelined_requests_are_answered_in_order(guarded, test_images, local_model):
    with expected_encoding(test_images, local_model) as (image, mean):
        raw = (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + upload_head("/encode", len(image)).replace(b"Connection: close\r\n", b"")
            + image
            + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        with connect(guarded) as sock:
            sock.sendall(raw)
            responses = parse(read_all(sock))
    assert [status for status, _, _ in responses] == [200, 200, 200]
    assert json.loads(responses[0][2]) == {"status": "ok"}
    np.testing.assert_allclose(json.loads(responses[1][2])["results"][0]["mean"], mean, rtol=1e-5, atol=1e-6)
    assert json.loads(responses[2][2])["status"] == "ready"
