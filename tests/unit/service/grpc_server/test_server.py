"""The gRPC transport in-process, on the test's event loop, over a fake model: a trace continuing the
client's traceparent, request ids, an unexpected error answered INTERNAL without its details, a deadline
that gives the model slot back, and the statistics it records."""

from __future__ import annotations

import socket

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.grpc import service_pb2

from service.grpc_server import server as grpc_server
from service.settings import GRACEFUL_SHUTDOWN_S
from service.v2 import protocol
from tests.unit.service.conftest import build
from tests.unit.service.fakes import FakeVAE
from tests.unit.service.test_served import GatedVAE, wait_for

pytestmark = pytest.mark.anyio
MODEL = "fake-vae"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """An app's state with its gRPC server started on a free port, and a channel to it."""

    def __init__(self, fake=None, span_exporter=None, **settings) -> None:
        self.app, self.fake = build(
            fake, span_exporter=span_exporter, host="127.0.0.1", grpc_port=free_port(), **settings
        )
        self.state = self.app.state.vae

    async def __aenter__(self) -> Served:
        self.server = await grpc_server.start(self.state, "vae-service", "test")
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.state.settings.grpc_port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await grpc_server.stop(self.server, 0)

    def rpc(self, method: str, response_type):
        return self.channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )


def decode_request(rows: int = 2) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=f"{MODEL}.decode")
    width = FakeVAE().manifest.latent[0]
    request.inputs.add(name="z", datatype="FP32", shape=[rows, width])
    request.raw_input_contents.append(np.zeros((rows, width), np.float32).tobytes())
    return request


async def test_a_call_continues_the_client_s_trace_with_its_model_call_and_response():
    exporter = InMemorySpanExporter()
    async with Served(span_exporter=exporter) as served:
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        call = served.rpc("ModelInfer", service_pb2.ModelInferResponse)(decode_request(), metadata=metadata)
        answer = await call
    assert answer.model_name == f"{MODEL}.decode"
    spans = {span.name: span for span in exporter.get_finished_spans()}
    root = spans["/inference.GRPCInferenceService/ModelInfer"]
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["rpc.system"] == "grpc" and root.attributes["rpc.method"] == "ModelInfer"
    model_call, response = spans["model call"], spans["response"]
    assert model_call.parent.span_id == root.context.span_id and model_call.attributes["vae.batch_size"] == 2
    assert response.parent.span_id == root.context.span_id
    assert {span.context.trace_id for span in spans.values()} == {root.context.trace_id}


async def test_the_request_id_comes_back_as_trailing_metadata():
    async with Served() as served:
        call = served.rpc("ServerLive", service_pb2.ServerLiveResponse)(
            service_pb2.ServerLiveRequest(), metadata=(("x-request-id", "client-id-7"),)
        )
        assert (await call).live is True
        assert dict(await call.trailing_metadata())["x-request-id"] == "client-id-7"
        invalid = served.rpc("ServerLive", service_pb2.ServerLiveResponse)(
            service_pb2.ServerLiveRequest(), metadata=(("x-request-id", "no spaces allowed"),)
        )
        await invalid
        assert len(dict(await invalid.trailing_metadata())["x-request-id"]) == 32  # one of ours instead


async def test_an_unexpected_error_is_internal_with_the_request_id_only(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail at /srv/internal/path")

    monkeypatch.setattr(protocol, "model_metadata", broken)
    async with Served() as served:
        call = served.rpc("ModelMetadata", service_pb2.ModelMetadataResponse)(
            service_pb2.ModelMetadataRequest(name=f"{MODEL}.encode"), metadata=(("x-request-id", "rid-1"),)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        live = await served.rpc("ServerLive", service_pb2.ServerLiveResponse)(service_pb2.ServerLiveRequest())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error (request id rid-1)"
    assert "secret detail" in caplog.text and live.live is True  # logged, not sent; the server goes on


async def test_a_passed_deadline_cancels_the_call_and_gives_its_model_slot_back():
    gated = GatedVAE()
    async with Served(fake=gated, inline_cost=0) as served:  # the model call on a worker thread
        request = service_pb2.ModelInferRequest(model_name=f"{MODEL}.encode")
        request.inputs.add(name="image", datatype="FP32", shape=[1, *gated.manifest.input.shape])
        request.raw_input_contents.append(np.zeros((1, *gated.manifest.input.shape), np.float32).tobytes())
        call = served.rpc("ModelInfer", service_pb2.ModelInferResponse)(request, timeout=0.5)
        await wait_for(lambda: gated.inside == 1)  # inside the model: its slot is held
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        resolved = served.state.resolve(MODEL)
        assert resolved.in_flight == 1  # the model still works for it: its slot is held
        gated.gate.set()  # the model call ends after its client has gone
        await wait_for(lambda: resolved.in_flight == 0)
        ready = await served.rpc("ServerReady", service_pb2.ServerReadyResponse)(service_pb2.ServerReadyRequest())
    assert ready.ready is True


async def test_statistics_over_grpc_are_the_store_s():
    async with Served() as served:
        infer = served.rpc("ModelInfer", service_pb2.ModelInferResponse)
        await infer(decode_request(rows=3))
        stats = await served.rpc("ModelStatistics", service_pb2.ModelStatisticsResponse)(
            service_pb2.ModelStatisticsRequest(name=f"{MODEL}.decode")
        )
    (row,) = stats.model_stats
    assert (row.name, row.inference_count, row.execution_count) == (f"{MODEL}.decode", 3, 1)
    assert row.inference_stats.success.count == 1 and row.inference_stats.compute_infer.ns > 0
    assert row.version == served.fake.manifest.version


async def test_grpc_port_0_turns_grpc_off_and_a_port_starts_it_with_the_app(monkeypatch):
    started, stopped = [], []

    async def start(state, name, version):
        started.append(state.settings.grpc_port)
        return "server"

    async def stop(server, grace):
        stopped.append((server, grace))

    monkeypatch.setattr(grpc_server, "start", start)
    monkeypatch.setattr(grpc_server, "stop", stop)
    for port in (0, 18555):
        app, _ = build(ready=False, grpc_port=port)
        async with app.router.lifespan_context(app):
            pass
    assert started == [18555] and stopped == [("server", GRACEFUL_SHUTDOWN_S)]  # HTTP's grace


async def test_a_taken_port_is_an_error_that_says_what_to_do():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app, _ = build(host="127.0.0.1", grpc_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="set VAE_GRPC_PORT to a free port, or 0 to turn gRPC off"):
            await grpc_server.start(app.state.vae, "vae-service", "test")
