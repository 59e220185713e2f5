"""The HTTP tracing middleware over raw ASGI messages: the `response` span from the first message to
the last body chunk, whatever the app does between them. (Traces through the whole app: test_tracing.py.)"""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from service import tracing
from service.http_tracing import HttpTracingMiddleware

pytestmark = pytest.mark.anyio
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def exporter():
    exporter = InMemorySpanExporter()
    tracing.configure(None, exporter)
    yield exporter
    tracing.configure(None)


async def call(app) -> list[dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": [(b"traceparent", TRACEPARENT)]}
    await HttpTracingMiddleware(app)(scope, receive, send)
    return sent


async def test_the_response_span_lasts_from_the_start_to_the_last_chunk_of_a_streamed_body(exporter):
    async def streaming(scope, receive, send):
        headers = [(b"x-request-id", b"abc")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            assert len(exporter.get_finished_spans()) == 0  # still sending: the response span is open
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        assert [s.name for s in exporter.get_finished_spans()] == ["response"]  # ended at the last chunk

    sent = await call(streaming)
    assert b"".join(m.get("body", b"") for m in sent) == b"one two three"
    response, request = exporter.get_finished_spans()
    assert response.parent.span_id == request.context.span_id
    assert response.attributes["http.response.body.size"] == len(b"one two three")
    assert (request.name, request.attributes["vae.request_id"]) == ("HTTP GET", "abc")  # no route in a bare app
    assert request.attributes["http.response.status_code"] == 200


async def test_an_app_that_fails_mid_response_ends_both_spans_and_records_the_error(exporter):
    async def failing(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("lost the stream")

    with pytest.raises(RuntimeError):
        await call(failing)
    response, request = exporter.get_finished_spans()
    assert response.name == "response" and response.attributes["http.response.body.size"] == len(b"partial")
    assert request.status.status_code == StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in request.events] == ["RuntimeError"]


async def test_lifespan_and_other_scopes_pass_through_untraced(exporter):
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    await HttpTracingMiddleware(app)({"type": "lifespan"}, None, None)
    assert seen == ["lifespan"] and exporter.get_finished_spans() == ()
