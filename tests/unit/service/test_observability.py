"""The observability middleware: request ids on every answer (a 500 too), client aborts as 499,
body deadlines and the upload limit. Driven over raw ASGI messages, and through the real app."""

import json
import logging
from types import SimpleNamespace

import anyio
import pytest
from starlette.requests import Request

from service.observability import Metrics, ObservabilityMiddleware
from tests.unit.service.conftest import build, client_for, png_bytes

pytestmark = pytest.mark.anyio
PNG = {"content-type": "image/png"}


def middleware(app, **limits):
    state = SimpleNamespace(metrics=Metrics())
    options = {"max_body": 1000, "max_uploads": 4, "body_timeout_s": 5.0, **limits}
    return ObservabilityMiddleware(app, state=state, **options), state.metrics


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


async def test_a_client_abort_mid_body_is_one_log_line_and_499_and_nothing_is_sent(caplog):
    async def reads_body(scope, receive, send):
        await Request(scope, receive).body()  # raises ClientDisconnect
        raise AssertionError("the body cannot be complete")

    messages = iter([{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    asgi, metrics = middleware(reads_body)
    with caplog.at_level(logging.INFO, logger="vae"):
        sent = await run(asgi, receive)
    assert sent == []
    lines = [r for r in caplog.records if r.name.startswith("vae")]
    assert len(lines) == 1 and not lines[0].exc_info and "disconnected" in lines[0].getMessage()
    assert counted(metrics, 499) == 1.0 and counted(metrics, 500) is None


async def test_an_abort_that_the_app_turns_into_a_400_is_still_499_and_unanswered():
    async def answers_400(scope, receive, send):  # as FastAPI does when a JSON body fails to arrive
        while (await receive())["type"] != "http.disconnect":
            pass
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.disconnect"}

    asgi, metrics = middleware(answers_400)
    assert await run(asgi, receive) == []
    assert counted(metrics, 499) == 1.0 and counted(metrics, 400) is None


async def test_a_stalled_raw_upload_gets_408_and_frees_its_upload_slot():
    app, _ = build(body_timeout_s=0.2, max_uploads=1)
    stalled = anyio.Event()  # never set: the client stops sending

    async def stalls():
        yield png_bytes(0)[:10]
        await stalled.wait()

    async with client_for(app) as client:
        response = await client.post("/encode", content=stalls(), headers=PNG)
        after = await client.post("/encode", content=png_bytes(0), headers=PNG)
    assert response.status_code == 408 and response.headers["connection"] == "close"
    assert response.json()["error"]["code"] == "request_timeout" and "0.2 s" in response.json()["error"]["message"]
    assert after.status_code == 200 and len(after.json()["results"]) == 1


@pytest.mark.parametrize(
    "path, content_type, first",
    [
        ("/encode", "multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="file"'),
        ("/decode", "application/json", b'{"z": [[0.1, '),
    ],
)
async def test_stalled_multipart_and_json_bodies_get_408_too(path, content_type, first):
    app, _ = build(body_timeout_s=0.2)
    stalled = anyio.Event()

    async def stalls():
        yield first
        await stalled.wait()

    async with client_for(app) as client:
        response = await client.post(path, content=stalls(), headers={"content-type": content_type})
    assert response.status_code == 408 and response.json()["error"]["code"] == "request_timeout"


async def while_a_slow_upload_waits(app, then) -> tuple[object, dict]:
    """Start an /encode whose body stops after 10 bytes, run `then(client, results)` while it waits,
    then let the body finish. Returns the slow upload's response and what `then` recorded."""
    arrived, finish = anyio.Event(), anyio.Event()
    data = png_bytes(0)
    results: dict = {}

    async def slow():
        yield data[:10]
        arrived.set()
        await finish.wait()
        yield data[10:]

    async with client_for(app) as client:

        async def slow_upload():
            results["slow"] = await client.post("/encode", content=slow(), headers=PNG)

        async with anyio.create_task_group() as group:
            group.start_soon(slow_upload)
            with anyio.fail_after(5):
                await arrived.wait()
            await then(client, results)
            finish.set()
    return results.pop("slow"), results


async def test_past_max_uploads_a_body_gets_a_fast_429_while_bodiless_requests_pass():
    async def meanwhile(client, results):
        results["second"] = await client.post("/encode", content=png_bytes(0), headers=PNG)
        results["health"] = await client.get("/healthz")

    slow, results = await while_a_slow_upload_waits(build(max_uploads=1, body_timeout_s=30)[0], meanwhile)
    second = results["second"]
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["code"] == "overloaded" and "uploads" in second.json()["error"]["message"]
    assert results["health"].json() == {"status": "ok"}
    assert slow.status_code == 200 and len(slow.json()["results"]) == 1


async def test_a_slow_upload_holds_no_model_slot():
    async def meanwhile(client, results):
        results["other"] = await client.post("/encode", content=png_bytes(0), headers=PNG)

    slow, results = await while_a_slow_upload_waits(build(max_in_flight=1, body_timeout_s=30)[0], meanwhile)
    assert results["other"].status_code == 200 and len(results["other"].json()["results"]) == 1
    assert slow.json()["results"][0]["mean"] == results["other"].json()["results"][0]["mean"]


async def test_a_route_that_raises_answers_500_with_the_request_id_through_the_whole_app(caplog):
    from tests.unit.service.fakes import FakeVAE

    app, _ = build(FakeVAE(broken=True))
    with caplog.at_level(logging.INFO, logger="vae"):
        async with client_for(app) as client:
            response = await client.post("/encode", content=png_bytes(0), headers={**PNG, "x-request-id": "r-500"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "r-500"
    assert response.json()["error"]["code"] == "internal_error" and "/opt/model" not in response.text
    assert len([r for r in caplog.records if r.exc_info]) == 1
