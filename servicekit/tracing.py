"""OpenTelemetry spans, when the SDK is installed and OTEL_EXPORTER_OTLP_ENDPOINT is set; else nothing.

No service depends on OpenTelemetry: the runtime lock does not have it. Where it is importable and an
endpoint is configured, each worker exports its spans over OTLP/HTTP (the SDK reads the OTEL_* variables:
endpoint, headers, batch delay): a server span per request, whose parent is the caller's traceparent, and
a client span per call to another service, whose context goes on in that call's traceparent.
Without them, the calls still carry a traceparent (servicekit/request_id.py) so the trace id goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests
from flask import Flask, Response, g, request

from .lifecycle import on_shutdown
from .request_id import RequestContext, current

if TYPE_CHECKING:
    from flask import Request

log = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"

# This process's tracer once set up; set up at most once per process (gunicorn's worker, after the fork:
# the exporter's thread would not survive it).
_tracer: Any = None
_set_up = False


def setup(service_name: str, instance_id: str, env: Mapping[str, str] | None = None) -> Any:
    """The process's tracer, or None when no endpoint is set or the SDK is not importable."""
    global _tracer, _set_up
    if _set_up:
        return _tracer
    _set_up = True
    env = os.environ if env is None else env
    if not (env.get(ENDPOINT) or env.get(TRACES_ENDPOINT)):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("%s is set but OpenTelemetry is not installed (%s): no spans are exported", ENDPOINT, exc)
        return None
    resource = Resource.create({"service.name": service_name, "service.instance.id": instance_id})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # The global provider, so a library's own instrumentation (if any) joins the same traces.
    trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("servicekit")
    log.info("exporting OpenTelemetry spans to %s", env.get(TRACES_ENDPOINT) or env.get(ENDPOINT))
    return _tracer


def shutdown() -> None:
    """Export what is still buffered (a worker's exit)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


# No span for these (the ids are still echoed and logged).
UNTRACED_PATHS = frozenset({"/health"})


def install(app: Flask, service_name: str, instance_id: str) -> None:
    """When OpenTelemetry is set up, each request's server span, begun once servicekit.request_id bound the
    request's context (install that first) and ended before it is unbound."""
    tracer = setup(service_name, instance_id)
    if tracer is None:
        return
    # Exports what is still buffered when the worker exits.
    on_shutdown(app, shutdown)

    @app.before_request
    def begin_span():
        ctx = current()
        # Consul's check every second would bury the requests' spans.
        if ctx is not None and request.path not in UNTRACED_PATHS:
            g.request_span = start_server_span(tracer, request, ctx)

    @app.after_request
    def span_status(response: Response) -> Response:
        span = g.get("request_span")
        if span is not None:
            span.set_status_code(response.status_code)
        return response

    @app.teardown_request
    def end_span(exc: BaseException | None) -> None:
        span = g.pop("request_span", None)
        if span is not None:
            span.end()


def start_server_span(tracer: Any, request: Request, ctx: RequestContext) -> Any:
    """The request's span, child of the caller's traceparent, made current for the request's thread."""
    from opentelemetry import context, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    # The propagator looks the header up by its lower-case name.
    parent = TraceContextTextMapPropagator().extract({k.lower(): v for k, v in request.headers.items()})
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    span = tracer.start_span(
        f"{request.method} {rule}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "url.path": request.path, "request_id": ctx.request_id},
    )
    # No traceparent came: the span began a new trace, which the calls sent on must carry.
    ctx.trace_id = format(span.get_span_context().trace_id, "032x")
    return _Current(span, context.attach(trace.set_span_in_context(span)))


class _Current:
    """A span made current until it ends."""

    def __init__(self, span: Any, token: Any):
        self.span = span
        self._token = token

    def set_status_code(self, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))

    def end(self) -> None:
        from opentelemetry import context

        self.span.end()
        context.detach(self._token)


class Session(requests.Session):
    """A requests session whose calls carry the current request's X-Request-ID and traceparent, each one
    in a client span when OpenTelemetry is set up. The facade's one seam for propagation: every call to
    another service goes through its session."""

    def request(self, method, url, *args, **kwargs):
        ctx = current()
        if ctx is None:
            return super().request(method, url, *args, **kwargs)
        headers = {**ctx.outgoing_headers(), **(kwargs.get("headers") or {})}
        kwargs["headers"] = headers
        if _tracer is None:
            return super().request(method, url, *args, **kwargs)
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        with _tracer.start_as_current_span(
            f"{method.upper()} {requests.utils.urlparse(url).path}",
            kind=trace.SpanKind.CLIENT,
            attributes={"http.request.method": method.upper(), "url.full": url},
        ) as span:
            TraceContextTextMapPropagator().inject(headers)
            response = super().request(method, url, *args, **kwargs)
            span.set_attribute("http.response.status_code", response.status_code)
            return response
