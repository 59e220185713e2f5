"""The open inference protocol over gRPC: Triton's `inference.GRPCInferenceService`, on its own port
(VAE_GRPC_PORT, 8001 as Triton's), in the same process as the REST routes, over the same models, limits,
statistics and metrics: every answer comes from service/v2/protocol.py, run on the app's event loop.

Handled: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer,
ModelStatistics, RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload. Triton's other RPCs
(streaming, shared memory, model config, trace and log settings) answer UNIMPLEMENTED.

gRPC's threaded server, not its asyncio one: grpc.aio admits one call at a time through the event loop,
so calls never overlapped and the micro-batcher got one at a time (1.02 rows an execution at c=32, against
about 10 over HTTP: docs/benchmarks.md). Here gRPC's own threads accept and read the calls, and each call's
thread hands it to the event loop and waits for its answer, so concurrent calls reach the loop together and
batch as HTTP's do.

Limits: a message over VAE_MAX_UPLOAD_BYTES is refused by gRPC itself (RESOURCE_EXHAUSTED), as is a call
past VAE_GRPC_MAX_CONCURRENT_RPCS; a model call past VAE_MAX_IN_FLIGHT is RESOURCE_EXHAUSTED as it is 429
over REST; the client's deadline cancels its call on the loop (its model work, once started, runs to its
end and holds its slot until then: service/served.py). The messages are parsed here (not by gRPC), so a
malformed one is INVALID_ARGUMENT with what is wrong; a large one is parsed on a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from service import tracing
from service.errors import ApiError
from service.grpc_server import codec, wire
from service.grpc_server import vae_inference_pb2 as pb
from service.observability import new_request_id, request_id_var, valid_request_id
from service.state import AppState
from service.v2 import protocol
from service.v2.codec import InferResponse, ProtocolError, quoted

log = logging.getLogger("vae.service")
SERVICE = "inference.GRPCInferenceService"
# The REST status of a refusal -> its gRPC code, as Triton and KServe map them.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,  # the protocol's 400 over REST (service/v2/errors.py)
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
MAX_MESSAGE = 2000  # characters of a status message
Handler = Callable[[Any, int, dict[str, str]], Awaitable[Any]]


def status_of(exc: ProtocolError | ApiError) -> tuple[grpc.StatusCode, str]:
    """The code and message of a refusal. The messages quote a client's text cut short already; the cut here
    keeps any message within what a gRPC status carries (its metadata is limited to 16 KiB)."""
    status = exc.status
    code = CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT)
    message = exc.message
    return code, message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


class InferenceService:
    """The RPCs, each over the protocol module; `handler()` registers them under Triton's service name."""

    def __init__(self, state: AppState, server_name: str, server_version: str, loop: asyncio.AbstractEventLoop) -> None:
        self.state, self.server_name, self.server_version, self.loop = state, server_name, server_version, loop

    def handler(self) -> grpc.GenericRpcHandler:
        rpcs: dict[str, tuple[Any, Handler]] = {
            "ServerLive": (pb.ServerLiveRequest, self.server_live),
            "ServerReady": (pb.ServerReadyRequest, self.server_ready),
            "ModelReady": (pb.ModelReadyRequest, self.model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self.server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self.model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self.model_infer),
            "ModelStatistics": (pb.ModelStatisticsRequest, self.model_statistics),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self.repository_index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self.repository_load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self.repository_unload),
        }
        # No (de)serializers: each call gets the message's bytes and returns its answer's, so that a
        # malformed message is answered here and the size of each is known.
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(self._rpc(name, *rpc)) for name, rpc in rpcs.items()},
        )

    def _rpc(self, method: str, message_type: Any, handle: Handler) -> Callable[[bytes, Any], bytes]:
        path = f"/{SERVICE}/{method}"

        async def answer(request: bytes, metadata: dict[str, str]) -> tuple[grpc.StatusCode, str, bytes, str]:
            began = time.perf_counter()
            request_id = valid_request_id(metadata.get("x-request-id")) or new_request_id()
            token = request_id_var.set(request_id)
            code, message, body = grpc.StatusCode.OK, "", b""
            metrics = self.state.metrics
            metrics.active += 1
            attributes = {
                "rpc.system": "grpc",
                "rpc.service": SERVICE,
                "rpc.method": method,
                "vae.request_id": request_id,
            }
            try:
                with tracing.request_span(path, metadata.get("traceparent"), metadata.get("tracestate"), attributes):
                    parsed = await parse(message_type, request)
                    result = await handle(parsed, len(request), metadata)
                    body = result if isinstance(result, bytes) else result.SerializeToString()
            except (ProtocolError, ApiError) as exc:
                code, message = status_of(exc)
            except asyncio.CancelledError:  # the client's deadline passed, or it cancelled the call
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("unhandled error on gRPC %s", method)
                code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
            finally:
                metrics.active -= 1
                metrics.observe_grpc(path, code.name, time.perf_counter() - began)
                request_id_var.reset(token)
            return code, message, body, request_id

        def rpc(request: bytes, context: grpc.ServicerContext) -> bytes:
            """On one of gRPC's threads: the answer from the event loop, its request id as trailing metadata."""
            metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
            future = asyncio.run_coroutine_threadsafe(answer(request, metadata), self.loop)
            context.add_callback(future.cancel)  # the call ended first (its deadline, a cancel): stop its work
            try:
                code, message, body, request_id = future.result()
            except concurrent.futures.CancelledError:  # nobody is there to answer
                context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
            context.set_trailing_metadata((("x-request-id", request_id),))
            if code != grpc.StatusCode.OK:
                context.abort(code, message)
            return body

        return rpc

    # --- health and metadata ---

    async def server_live(self, _: Any, size: int, metadata: dict[str, str]) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: Any, size: int, metadata: dict[str, str]) -> Any:
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def model_ready(self, request: Any, size: int, metadata: dict[str, str]) -> Any:
        """ready false for a model that does not serve, whatever the reason: tritonclient.http's
        is_model_ready says False for REST's 400 and 404 alike."""
        try:
            protocol.model_ready(self.state, request.name, request.version or None)
        except ProtocolError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, _: Any, size: int, metadata: dict[str, str]) -> Any:
        return pb.ServerMetadataResponse(
            name=self.server_name, version=self.server_version, extensions=protocol.EXTENSIONS
        )

    async def model_metadata(self, request: Any, size: int, metadata: dict[str, str]) -> Any:
        body = protocol.model_metadata(self.state, request.name, request.version or None)
        return json_format.ParseDict(body, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    # --- inference and statistics ---

    async def model_infer(self, request: Any, size: int, metadata: dict[str, str]) -> bytes:
        began = time.perf_counter_ns()
        name, version = request.model_name, request.model_version or None
        resolved = protocol.resolve(self.state, name, version)  # 404 or 503 before any tensor is read
        rows = self.state.settings.max_batch
        if size <= protocol.INLINE_PARSE_BYTES:
            parsed = codec.infer_request(request, size, rows)
        else:
            parsed = await anyio.to_thread.run_sync(codec.infer_request, request, size, rows)
        return await protocol.infer(self.state, name, resolved, parsed, began, False, _response)

    async def model_statistics(self, request: Any, size: int, metadata: dict[str, str]) -> Any:
        body = protocol.model_statistics(self.state, request.name or None, request.version or None)
        return json_format.ParseDict(body, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # --- the repository extension, behind the admin token (metadata `authorization: Bearer <token>`) ---

    async def repository_index(self, request: Any, size: int, metadata: dict[str, str]) -> Any:
        self._control(request, metadata)
        rows = await protocol.repository_index(self.state, request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def repository_load(self, request: Any, size: int, metadata: dict[str, str]) -> Any:
        self._control(request, metadata)
        await protocol.load(self.state, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, request: Any, size: int, metadata: dict[str, str]) -> Any:
        self._control(request, metadata)
        await protocol.unload(self.state, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _control(self, request: Any, metadata: dict[str, str]) -> None:
        protocol.authorize(self.state, metadata.get("authorization"))
        if request.repository_name:
            raise ProtocolError(
                f"no repository {quoted(request.repository_name)}: this server has one, named by "
                "leaving repository_name empty"
            )


async def parse(message_type: Any, request: bytes) -> Any:
    """The message, parsed on the event loop when small, else on a worker thread (a message of many small
    entries takes protobuf a while to build); an inference request's entries counted first (wire.py)."""
    if len(request) <= protocol.INLINE_PARSE_BYTES:
        return _parsed(message_type, request)
    return await anyio.to_thread.run_sync(_parsed, message_type, request)


def _parsed(message_type: Any, request: bytes) -> Any:
    wire.check(message_type.__name__, request)
    try:
        return message_type.FromString(request)
    except DecodeError:
        raise ProtocolError(f"the message is not a valid {message_type.__name__}") from None


def _response(response: InferResponse) -> bytes:
    """The response message, serialized: its own span when tracing is on."""
    with tracing.span("response", {"vae.outputs": len(response.outputs)}):
        return codec.infer_response(response)


def options(state: AppState) -> list[tuple[str, Any]]:
    settings = state.settings
    return [
        ("grpc.max_receive_message_length", settings.max_upload_bytes),
        # The response's size is checked before it is built (VAE_MAX_RESPONSE_BYTES); the margin is the
        # message's own framing around the tensors' bytes.
        ("grpc.max_send_message_length", settings.max_response_bytes + 1024 * 1024),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_rpcs),
        # Several workers share the port; one worker must not silently share it with another server.
        ("grpc.so_reuseport", 1 if settings.worker_processes > 1 else 0),
    ]


async def start(state: AppState, server_name: str, server_version: str) -> grpc.Server:
    """A started server on VAE_HOST:VAE_GRPC_PORT whose calls run on the running event loop; raises when the
    port cannot be bound. Its threads: one each for the calls it may handle at once (they wait for the loop)."""
    settings = state.settings
    handler = InferenceService(state, server_name, server_version, asyncio.get_running_loop()).handler()
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(settings.grpc_max_concurrent_rpcs, thread_name_prefix="vae-grpc"),
        handlers=(handler,),
        options=options(state),
        maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
    )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        bound, reason = 0, str(exc)
    else:
        reason = "the port is taken"
    if not bound:
        raise RuntimeError(
            f"cannot listen for gRPC on {address} ({reason}): set VAE_GRPC_PORT to a free port, or 0 to turn gRPC off"
        )
    server.start()
    log.info("gRPC (the open inference protocol) on %s", address)
    return server


async def stop(server: grpc.Server, grace_s: float) -> None:
    """Calls in flight get `grace_s` to finish (on the loop, which keeps running meanwhile); later ones are refused."""
    done = server.stop(grace_s)
    await anyio.to_thread.run_sync(done.wait)
