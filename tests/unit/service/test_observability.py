"""The observability middleware: request ids on every answer (a 500 too), one traceback and a
generic 500 for an unexpected error, requests counted by route and status. Driven over raw ASGI
messages, and through the real app."""

import json
import logging

import pytest

from service.limits import RequestLimitsMiddleware
from service.observability import Metrics, ObservabilityMiddleware
from tests.unit.service.conftest import PNG, build, client_for, png_bytes
from tests.unit.service.fakes import FakeVAE

pytestmark = pytest.mark.anyio


def middleware(app, **limits):
    """The two middlewares as the app stacks them: observability outside, the body limits inside."""
    metrics = Metrics()
    options = {"max_body": 1000, "max_uploads": 4, "body_timeout_s": 5.0, **limits}
    return ObservabilityMiddleware(RequestLimitsMiddleware(app, metrics, **options), metrics), metrics


def scope(headers=()):
    return {"type": "http", "method": "POST", "path": "/x", "headers": [(b"content-length", b"3"), *headers]}


async def run(asgi, receive, headers=()):
    sent = []

    async def send(message):
        sent.append(message)

    await asgi(scope(headers), receive, send)
    return sent


def answer(sent):
    start, body = sent
    return start["status"], dict(start["headers"]), json.loads(body["body"])


def counted(metrics, status):
    # These bare apps match no route (FastAPI puts the matched route in the scope), so the label is "other".
    return metrics.registry.get_sample_value(
        "vae_requests_total", {"route": "other", "method": "POST", "status": str(status)}
    )


async def test_an_unexpected_exception_is_a_generic_500_with_the_request_id_and_one_traceback(caplog):
    async def broken(scope, receive, send):
        raise RuntimeError("secret detail /opt/model")

    asgi, metrics = middleware(broken)

    async def receive():
        return {"type": "http.request", "body": b"abc", "more_body": False}

    with caplog.at_level(logging.INFO, logger="vae"):
        sent = await run(asgi, receive, headers=[(b"x-request-id", b"req-7")])
    status, headers, body = answer(sent)
    assert status == 500 and headers[b"x-request-id"] == b"req-7"
    assert body["error"]["code"] == "internal_error" and "secret" not in json.dumps(body)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "secret detail" in str(tracebacks[0].exc_info[1])
    assert counted(metrics, 500) == 1.0


async def test_a_route_that_raises_answers_500_with_the_request_id_through_the_whole_app(caplog):
    app, _ = build(FakeVAE(broken=True))
    with caplog.at_level(logging.INFO, logger="vae"):
        async with client_for(app) as client:
            response = await client.post("/encode", content=png_bytes(0), headers={**PNG, "x-request-id": "r-500"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "r-500"
    assert response.json()["error"]["code"] == "internal_error" and "/opt/model" not in response.text
    assert len([r for r in caplog.records if r.exc_info]) == 1


async def test_request_id_is_echoed_or_made(client):
    echoed = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32


async def test_metrics_count_requests_by_route_and_status(client):
    await client.get("/sample?n=2&seed=1")
    await client.get("/sample?n=0")
    text = (await client.get("/metrics")).text
    assert 'vae_requests_total{method="GET",route="/sample",status="200"} 1.0' in text
    assert 'vae_requests_total{method="GET",route="/sample",status="422"} 1.0' in text
    assert "vae_request_duration_seconds_bucket" in text
    assert 'vae_images_processed_total{model="fake-vae",operation="sample",version="9.9.9"} 2.0' in text
    assert "vae_inference_duration_seconds" in text


@pytest.mark.parametrize(
    ("location", "relative"),
    [
        (b"http://evil.example/ui/", b"/ui/"),
        (b"https://evil.example//other.example/x?a=1", b"/other.example/x?a=1"),  # no protocol-relative URL
        (b"//evil.example/y", b"/y"),
        (b"ui/", b"ui/"),  # already relative: as it is
    ],
)
async def test_a_redirect_never_names_a_host(location, relative):
    async def redirects(scope, receive, send):
        await send({"type": "http.response.start", "status": 307, "headers": [(b"location", location)]})
        await send({"type": "http.response.body", "body": b""})

    asgi, _ = middleware(redirects)

    async def receive():
        return {"type": "http.request", "body": b"abc", "more_body": False}

    start, _ = await run(asgi, receive)
    assert dict(start["headers"])[b"location"] == relative


def test_request_ids_are_32_hex_digits_unique_and_drawn_per_process():
    import os
    import subprocess
    import sys

    from service.observability import new_request_id
    from tests.conftest import REPO

    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    other = subprocess.run(
        [sys.executable, "-c", "from service.observability import new_request_id; print(new_request_id())"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout.strip()
    assert len(other) == 32 and other[:16] != ids[0][:16]  # another process draws its own random half


def test_a_forked_process_draws_its_own_request_ids():
    import os

    from service.observability import new_request_id

    parent = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, through the pipe, and out without running pytest's exit handlers
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child) == 32 and child[:16] != parent[:16]
