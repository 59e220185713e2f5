"""Traces (service/tracing.py, service/http_tracing.py): read from an in-memory exporter after
requests to the app with a fake model. A request is one SERVER span that continues the client's
W3C traceparent, with its image decoding, its model call and its response as children; off,
nothing is traced and requests do not pass through the tracing middleware."""

import asyncio
import json
import struct

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service import tracing
from service.app import package_version
from service.batching import MicroBatcher
from service.http_tracing import HttpTracingMiddleware, trace_context
from tests.unit.service.conftest import PNG, build, client_for, png_bytes
from tests.unit.service.fakes import LATENT, FakeVAE

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"


@pytest.fixture
def exporter():
    exporter = InMemorySpanExporter()
    yield exporter
    tracing.configure(None)  # the next test starts untraced, whatever this one configured


@pytest.fixture
async def traced(exporter):
    app, _ = build(span_exporter=exporter)
    async with client_for(app) as client:
        yield client


def one_trace(spans) -> tuple[object, dict[str, object]]:
    """The request span and its children by name, all checked to be in the request span's trace."""
    (request,) = [s for s in spans if s.kind == SpanKind.SERVER]
    children = {s.name: s for s in spans if s is not request}
    assert len(children) == len(spans) - 1, [s.name for s in spans]  # each name once
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}
    return request, children


def parent_of(span) -> int:
    return span.parent.span_id


def bytes_request(blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A v2 request with `blobs` as its image_bytes input, in the binary extension."""
    data = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    tensor = {"name": "image_bytes", "datatype": "BYTES", "shape": [len(blobs)]}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, {"inference-header-content-length": str(len(header))}


async def test_an_encode_request_continues_the_clients_trace_with_decode_model_and_response_spans(traced, exporter):
    image = png_bytes(1)
    response = await traced.post("/encode", content=image, headers={**PNG, "traceparent": TRACEPARENT})
    (result,) = response.json()["results"]
    assert response.status_code == 200 and len(result["mean"]) == LATENT
    request, children = one_trace(exporter.get_finished_spans())
    assert set(children) == {"decode images", "model call", "response"}
    assert request.name == "POST /encode"
    assert format(request.context.trace_id, "032x") == TRACE_ID  # the client's trace
    assert format(parent_of(request), "016x") == CLIENT_SPAN_ID and request.parent.is_remote
    assert dict(request.attributes) == {
        "http.request.method": "POST",
        "url.path": "/encode",
        "http.route": "/encode",
        "http.response.status_code": 200,
        "vae.request_id": response.headers["x-request-id"],
    }
    assert request.status.status_code == StatusCode.UNSET
    assert {name: parent_of(span) for name, span in children.items()} == dict.fromkeys(
        children, request.context.span_id
    )
    assert dict(children["decode images"].attributes) == {"vae.images": 1, "vae.bytes": len(image)}
    assert dict(children["model call"].attributes) == {
        "vae.model": "fake-vae",
        "vae.version": "9.9.9",
        "vae.operation": "encode",
        "vae.rows": 1,
        "vae.batch_size": 1,  # micro-batched (the default): a lone request's batch
    }
    assert children["response"].attributes["http.response.body.size"] == len(response.content)
    decode, call, sent = children["decode images"], children["model call"], children["response"]
    assert request.start_time <= decode.start_time <= decode.end_time <= call.start_time
    assert call.end_time <= sent.start_time <= sent.end_time <= request.end_time


async def test_a_v2_infer_request_is_named_by_its_route_and_decodes_its_bytes_images(traced, exporter):
    body, headers = bytes_request([png_bytes(1), png_bytes(2)])
    headers |= {"traceparent": TRACEPARENT, "tracestate": "vendor=abc", "x-request-id": "trace-test-1"}
    response = await traced.post("/v2/models/fake-vae.encode/infer", content=body, headers=headers)
    assert response.status_code == 200
    assert {o["name"]: o["shape"] for o in response.json()["outputs"]} == {"mean": [2, LATENT], "logvar": [2, LATENT]}
    request, children = one_trace(exporter.get_finished_spans())
    assert request.name == "POST /v2/models/{name}/infer"
    assert (request.attributes["url.path"], request.attributes["vae.request_id"]) == (
        "/v2/models/fake-vae.encode/infer",
        "trace-test-1",
    )
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert request.context.trace_state.get("vendor") == "abc"  # the client's tracestate goes on
    assert set(children) == {"decode images", "model call", "response"}
    assert all(parent_of(span) == request.context.span_id for span in children.values())
    assert children["decode images"].attributes["vae.images"] == 2
    call = children["model call"].attributes
    assert (call["vae.rows"], call["vae.batch_size"]) == (2, 2)


async def test_a_direct_model_call_has_its_rows_as_its_batch_size(exporter):
    app, _ = build(span_exporter=exporter, micro_batch=False)
    async with client_for(app) as client:
        response = await client.post("/decode", json={"z": [[0.0] * LATENT] * 3})
    assert response.status_code == 200 and len(response.json()["images"]) == 3
    _, children = one_trace(exporter.get_finished_spans())
    call = children["model call"]
    assert (call.attributes["vae.operation"], call.attributes["vae.rows"], call.attributes["vae.batch_size"]) == (
        "decode",
        3,
        3,
    )


async def test_each_request_of_a_micro_batch_has_its_own_span_with_the_batchs_size(exporter):
    tracing.configure(None, exporter)
    batcher = MicroBatcher(FakeVAE().encode, max_rows=3, max_wait_s=60)  # sent when the third row arrives

    async def request(rows: int) -> np.ndarray:
        with tracing.request_span("request", None), tracing.span("model call", {"vae.rows": rows}) as span:
            mean, _ = await batcher.submit(np.zeros((rows, 1, 8, 8), np.float32), span)
        return mean

    means = await asyncio.gather(request(1), request(2))
    assert [len(mean) for mean in means] == [1, 2] and batcher.calls == 1
    calls = [s for s in exporter.get_finished_spans() if s.name == "model call"]
    assert sorted((s.attributes["vae.rows"], s.attributes["vae.batch_size"]) for s in calls) == [(1, 3), (2, 3)]
    requests = {s.context.span_id for s in exporter.get_finished_spans() if s.name == "request"}
    assert {parent_of(s) for s in calls} == requests and len(requests) == 2  # each in its own request's trace


async def test_without_a_traceparent_a_request_starts_a_new_trace(traced, exporter):
    response = await traced.post("/encode", content=png_bytes(1), headers=PNG)
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    request, children = one_trace(exporter.get_finished_spans())
    assert request.parent is None and request.context.trace_id != 0
    assert set(children) == {"decode images", "model call", "response"}


@pytest.mark.parametrize(
    "traceparent",
    [
        "not a traceparent",
        f"00-{TRACE_ID}",  # no span id
        f"00-{'0' * 32}-{CLIENT_SPAN_ID}-01",  # the all-zero trace id is invalid
        f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID.upper()}-{CLIENT_SPAN_ID}-01",  # upper-case hex is invalid
    ],
)
async def test_a_malformed_traceparent_starts_a_new_trace_without_an_error(traced, exporter, traceparent):
    response = await traced.post("/encode", content=png_bytes(1), headers={**PNG, "traceparent": traceparent})
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    request, _ = one_trace(exporter.get_finished_spans())
    assert request.parent is None and format(request.context.trace_id, "032x") != TRACE_ID


async def test_a_trace_the_client_did_not_sample_is_not_recorded(traced, exporter):
    unsampled = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-00"
    response = await traced.post("/encode", content=png_bytes(1), headers={**PNG, "traceparent": unsampled})
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    assert exporter.get_finished_spans() == ()


async def test_a_clients_error_is_recorded_on_the_decoding_not_as_the_servers(traced, exporter):
    response = await traced.post("/encode", content=b"not an image", headers={**PNG, "traceparent": TRACEPARENT})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    request, children = one_trace(exporter.get_finished_spans())
    assert set(children) == {"decode images", "response"}  # no model call
    assert request.attributes["http.response.status_code"] == 400
    assert request.status.status_code == StatusCode.UNSET  # a 4xx is the client's error
    decode = children["decode images"]
    assert decode.status.status_code == StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in decode.events] == ["service.errors.ApiError"]


async def test_a_server_error_marks_the_request_span_failed(exporter):
    app, _ = build(FakeVAE(broken=True), span_exporter=exporter, micro_batch=False)
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(1), headers={**PNG, "traceparent": TRACEPARENT})
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text
    request, children = one_trace(exporter.get_finished_spans())
    assert request.attributes["http.response.status_code"] == 500
    assert request.status.status_code == StatusCode.ERROR
    call = children["model call"]
    assert call.status.status_code == StatusCode.ERROR
    assert [event.attributes["exception.type"] for event in call.events] == ["RuntimeError"]


async def test_a_request_that_matches_no_route_keeps_its_method_name(traced, exporter):
    response = await traced.get("/no-such-route", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    request, children = one_trace(exporter.get_finished_spans())
    assert request.name == "HTTP GET" and "http.route" not in request.attributes
    assert set(children) == {"response"}


def test_the_resource_names_the_service_and_its_version_unless_otel_variables_do(exporter, monkeypatch):
    tracing.configure(None, exporter, version="1.2.3")
    with tracing.request_span("r", None):
        pass
    (first,) = exporter.get_finished_spans()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "vae-eu")
    renamed = InMemorySpanExporter()  # a provider shuts its exporters down with it
    tracing.configure(None, renamed, version="1.2.3")
    with tracing.request_span("r", None):
        pass
    (second,) = renamed.get_finished_spans()
    assert (first.resource.attributes["service.name"], first.resource.attributes["service.version"]) == (
        "vae-service",
        "1.2.3",
    )
    assert second.resource.attributes["service.name"] == "vae-eu"


async def test_the_app_reports_its_package_version(traced, exporter):
    assert (await traced.get("/healthz")).status_code == 200
    spans = exporter.get_finished_spans()
    assert {span.resource.attributes["service.version"] for span in spans} == {package_version()}


async def test_off_nothing_is_traced_and_requests_skip_the_middleware(exporter):
    tracing.configure(None, exporter)  # on, then the app's settings (no endpoint) turn it off
    app, _ = build()
    assert not tracing.enabled()
    assert HttpTracingMiddleware not in [m.cls for m in app.user_middleware]
    async with client_for(app) as client:
        response = await client.post("/encode", content=png_bytes(1), headers={**PNG, "traceparent": TRACEPARENT})
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    assert exporter.get_finished_spans() == ()


def test_off_every_span_is_the_same_no_op():
    tracing.configure(None)
    assert not tracing.enabled()
    assert tracing.request_span("r", TRACEPARENT) is tracing.NO_SPAN
    assert tracing.span("s", {"a": 1}) is tracing.NO_SPAN
    with tracing.request_span("r", TRACEPARENT) as request, tracing.span("s") as child:
        assert request is None and child is None
    assert tracing.start_span("s", None) is None
    tracing.set_attributes(None, {"a": 1})
    tracing.set_error(None, "no-op")


def test_on_a_span_outside_a_recorded_request_is_the_no_op(exporter):
    tracing.configure(None, exporter)
    assert tracing.span("no request") is tracing.NO_SPAN  # a warm-up or a background task: no trace of its own
    with tracing.request_span("request", f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-00") as request:  # not sampled
        assert not request.is_recording()
        assert tracing.span("child") is tracing.NO_SPAN and tracing.start_span("response", request) is None
    with tracing.request_span("request", TRACEPARENT) as request, tracing.span("child") as child:
        assert child.is_recording()
        tracing.start_span("response", request).end()
    assert [s.name for s in exporter.get_finished_spans()] == ["response", "child", "request"]


def test_spans_nest_in_worker_threads_and_an_exception_is_recorded(exporter):
    tracing.configure(None, exporter)

    def in_a_thread() -> None:
        with tracing.span("in a thread"):
            pass

    async def work() -> None:
        with tracing.request_span("request", TRACEPARENT):
            await asyncio.to_thread(in_a_thread)  # the context goes with the call, as with anyio's threads
            with pytest.raises(ValueError), tracing.span("failing"):
                raise ValueError("bad input")

    asyncio.run(work())
    thread, failing, request = exporter.get_finished_spans()
    assert parent_of(thread) == parent_of(failing) == request.context.span_id
    assert failing.status.status_code == StatusCode.ERROR and failing.events[0].name == "exception"


def test_configuring_again_replaces_the_provider_and_shutdown_turns_tracing_off():
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    tracing.configure(None, first)
    tracing.configure(None, second)
    with tracing.request_span("r", None):
        pass
    assert (len(first.get_finished_spans()), len(second.get_finished_spans())) == (0, 1)
    tracing.shutdown()
    assert not tracing.enabled() and tracing.span("s") is tracing.NO_SPAN


def test_the_trace_headers_are_read_from_the_asgi_headers():
    headers = [(b"tracestate", b"a=1"), (b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"b=2")]
    assert trace_context(headers) == (TRACEPARENT, "a=1,b=2")
    assert trace_context([(b"host", b"x")]) == (None, None)
