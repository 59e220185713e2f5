"""OpenTelemetry traces: a span for each request and for the work inside it, exported over OTLP.

Off unless configured (VAE_OTLP_ENDPOINT), and then opentelemetry's SDK is never imported (its API
is: FastAPI imports it), and every function here checks one module variable and hands back a
shared no-op (`off_path_us` and the costs on, in bench/results/tracing_cost.json, from
`python -m bench.tracing_cost`).

The spans live in opentelemetry's context, which is a contextvar: a span opened in a request's task
is the parent of the spans opened later in that task and in the worker threads it starts (anyio
copies the context into them). The provider is this module's own, never opentelemetry's global one,
so configuring it again (each app factory does) replaces it whole: one process, one configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

NO_SPAN: AbstractContextManager[None] = nullcontext()  # reusable: entering it allocates nothing
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_api: _Api | None = None


class _Api:
    """The few opentelemetry names the spans need, imported once tracing is turned on."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.server, self.internal = trace.SpanKind.SERVER, trace.SpanKind.INTERNAL
        self.status = trace.Status
        self.error_code = trace.StatusCode.ERROR
        self.in_context = trace.set_span_in_context
        self.current_span = trace.get_current_span
        self.empty_context = Context
        self.propagator = TraceContextTextMapPropagator()


def configure(
    endpoint: str | None,
    exporter: SpanExporter | None = None,
    service_name: str = "vae-service",
    version: str = "",
) -> None:
    """Turn tracing on, or off when both `endpoint` and `exporter` are None (the previous provider is
    shut down either way). `endpoint`: an OTLP/HTTP traces URL (http://collector:4318/v1/traces),
    exported in batches from a background thread; the exporter also reads the standard
    OTEL_EXPORTER_OTLP_* variables (headers, timeout, certificates) and the batches OTEL_BSP_*.
    `exporter`: any SpanExporter, given each span as it ends (tests pass an in-memory one).
    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the resource's name and version, and
    OTEL_TRACES_SAMPLER the sampler (by default every trace is kept, unless the client's
    traceparent says its trace is not sampled)."""
    global _provider, _tracer, _api
    previous, _provider, _tracer = _provider, None, None
    if previous is not None:
        previous.shutdown()
    if endpoint is None and exporter is None:
        return
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    ours = Resource.create({"service.name": service_name, "service.version": version})
    provider = TracerProvider(resource=ours.merge(OTELResourceDetector().detect()))
    if endpoint is not None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _api = _api or _Api()
    _provider, _tracer = provider, provider.get_tracer("vae-service", version or None)


def shutdown() -> None:
    """Export what is queued and stop (the app's shutdown); tracing is off afterwards."""
    configure(None)


def enabled() -> bool:
    return _tracer is not None


def request_span(
    name: str,
    traceparent: str | None,
    tracestate: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Any]:
    """A SERVER span for one request, current inside the `with`; it yields the span (None when off).
    It continues the client's trace when `traceparent` is a valid W3C trace context, and starts a
    new trace otherwise (none sent, or malformed: never an error). An exception leaving the `with`
    is recorded on the span and sets its status to error."""
    if _tracer is None or _api is None:
        return NO_SPAN
    carrier = {"traceparent": traceparent} if traceparent else {}
    if traceparent and tracestate:
        carrier["tracestate"] = tracestate
    # Extracted into an empty context, not the current one: without a valid traceparent, a new trace.
    parent = _api.propagator.extract(carrier, _api.empty_context())
    return _tracer.start_as_current_span(name, context=parent, kind=_api.server, attributes=attributes)


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """An INTERNAL span, the child of the current one and current inside the `with`; it yields the
    span (None when off). An exception leaving the `with` is recorded and sets the error status.
    Outside a recorded request span (none current, or its trace not sampled) it is the no-op too:
    the sampler would drop such a child anyway, and it costs nothing to skip."""
    if _tracer is None or _api is None or not _api.current_span().is_recording():
        return NO_SPAN
    return _tracer.start_as_current_span(name, kind=_api.internal, attributes=attributes)


def start_span(name: str, parent: Any, attributes: Mapping[str, Any] | None = None) -> Any:
    """An INTERNAL child of `parent` that is never made current, for work that begins in one callback
    and ends in another (a response's first and last message): the caller calls its `end()`. None
    when `parent` is None (tracing off) or not recorded (its trace not sampled)."""
    if parent is None or _tracer is None or _api is None or not parent.is_recording():
        return None
    return _tracer.start_span(name, context=_api.in_context(parent), kind=_api.internal, attributes=attributes)


def set_attributes(span: Any, attributes: Mapping[str, Any]) -> None:
    if span is not None:
        span.set_attributes(attributes)


def set_error(span: Any, description: str) -> None:
    """Mark the span failed (a 5xx answer, say) where no exception left its `with` to do it."""
    if span is not None and _api is not None:
        span.set_status(_api.status(_api.error_code, description))
