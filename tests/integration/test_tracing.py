"""Traces over real HTTP: a `vae-serve` with VAE_OTLP_ENDPOINT exports, in OTLP/HTTP protobuf, to a
collector stub in this process; a request that sends a traceparent comes back as one trace there."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import REPO
from tests.integration.conftest import MODEL_VERSION, Server

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("VAE_BASE_URL")), reason="starts a server of its own, exporting to a collector here"
)
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN_ID = "b7ad6b7169203331"
SERVER, INTERNAL = 2, 1  # OTLP's Span.SpanKind values


class Collector:
    """Receives OTLP/HTTP exports on POST /v1/traces; `wait_for` blocks until a condition on the spans holds."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, object], object]] = []  # (resource attributes, span)
        self.changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                export = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                with collector.changed:
                    for resource_spans in export.resource_spans:
                        resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope_spans in resource_spans.scope_spans:
                            collector.spans += [(resource, span) for span in scope_spans.spans]
                    collector.changed.notify_all()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, condition, timeout: float = 30) -> list:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self.spans), timeout), [s.name for _, s in self.spans]
            return list(self.spans)


def in_trace(spans: list) -> list:
    """The spans of the trace the test's client started."""
    return [span for _, span in spans if span.trace_id.hex() == TRACE_ID]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    collector.server.shutdown()
    collector.server.server_close()


@pytest.fixture(scope="module")
def traced_url(tmp_path_factory, collector) -> Iterator[str]:
    # Batches sent every 50 ms rather than every 5 s; no gRPC port (it would need one free of its own).
    env = {"VAE_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50", "VAE_GRPC_PORT": "0"}
    with Server(tmp_path_factory.mktemp("traced"), **env) as server:
        yield server.url


def test_a_request_over_http_is_exported_as_one_trace_continuing_the_clients(traced_url, collector):
    image = (REPO / "samples" / "shirt.png").read_bytes()
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
    response = httpx.post(
        f"{traced_url}/encode", content=image, headers={"content-type": "image/png", "traceparent": traceparent}
    )
    assert response.status_code == 200 and len(response.json()["results"]) == 1
    spans = in_trace(collector.wait_for(lambda spans: any(s.kind == SERVER for s in in_trace(spans))))
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.name == "POST /encode" and request.parent_span_id.hex() == CLIENT_SPAN_ID
    attributes = {a.key: a.value for a in request.attributes}
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["vae.request_id"].string_value == response.headers["x-request-id"]
    children = {s.name: s for s in spans if s is not request}
    assert set(children) == {"decode images", "model call", "response"}
    assert all(s.kind == INTERNAL and s.parent_span_id == request.span_id for s in children.values())
    call = {a.key: a.value for a in children["model call"].attributes}
    assert (call["vae.model"].string_value, call["vae.version"].string_value) == ("fashion-mnist-vae", MODEL_VERSION)
    assert (call["vae.rows"].int_value, call["vae.batch_size"].int_value) == (1, 1)
    resource = next(resource for resource, span in collector.spans if span is request)
    assert resource["service.name"] == "vae-service" and resource["service.version"]
