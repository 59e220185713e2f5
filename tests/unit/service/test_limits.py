"""The limits middleware: client aborts as 499, body deadlines (408), the upload limit (429), the body
size (413). Driven over raw ASGI messages (inside the observability middleware, as the app stacks
them), and through the real app."""

import logging

import anyio
import pytest
from starlette.requests import Request

from tests.unit.service.conftest import build, client_for, error_of, png_bytes
from tests.unit.service.test_observability import PNG, counted, middleware, run

pytestmark = pytest.mark.anyio


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


async def test_body_over_the_limit_is_413():
    app, _ = build(max_upload_bytes=1000)
    async with client_for(app) as client:
        response = await client.post("/encode", content=b"x" * 1001, headers=PNG)
    assert error_of(response) == (413, "payload_too_large")


async def test_a_chunked_body_over_the_limit_is_413_on_json_routes_too():
    app, _ = build(max_upload_bytes=100)

    async def chunks():
        for _ in range(10):
            yield b'{"z": [' + b" " * 50

    async with client_for(app) as client:
        response = await client.post("/decode", content=chunks(), headers={"content-type": "application/json"})
        declared = await client.post(
            "/decode", content=b"{" + b" " * 200 + b"}", headers={"content-type": "application/json"}
        )
    assert error_of(response) == (413, "payload_too_large")
    assert error_of(declared) == (413, "payload_too_large")


async def test_a_body_already_in_is_received_without_looking_up_the_task(monkeypatch):
    """Only a receive that has to wait names its task for the deadline (in this Python each
    asyncio.current_task() is a getpid system call); a stalled one still gets its 408 (above)."""
    from service import limits

    looked_up = []
    real = limits.asyncio.current_task
    monkeypatch.setattr(limits.asyncio, "current_task", lambda *a: looked_up.append(1) or real(*a))
    app, _ = build(body_timeout_s=0.2)
    stalled = anyio.Event()

    async def stalls():
        yield png_bytes(0)[:10]
        await stalled.wait()

    async with client_for(app) as client:
        whole = await client.post("/encode", content=png_bytes(0), headers=PNG)
        assert whole.status_code == 200 and looked_up == []
        late = await client.post("/encode", content=stalls(), headers=PNG)
    assert late.status_code == 408 and looked_up
