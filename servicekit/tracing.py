"""OpenTelemetry spans, when the SDK is installed and OTEL_EXPORTER_OTLP_ENDPOINT is set; else nothing.

No service depends on OpenTelemetry: the runtime lock does not have it. Where it is importable and an
endpoint is configured, each worker exports its spans over OTLP/HTTP (the SDK reads the OTEL_* variables:
endpoint, headers, batch delay), made by OpenTelemetry's own instrumentations: a server span per Flask
request (opentelemetry-instrumentation-flask), whose parent is the caller's traceparent, and a client span
per call made with requests (opentelemetry-instrumentation-requests), whose context goes on in that call's
traceparent. Without them, the calls still carry a traceparent (servicekit/request_id.py) so the trace
id goes on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from .lifecycle import on_shutdown
from .request_id import RequestContext, current

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"

# No span for these requests (the ids are still echoed and logged): Consul's check every second would
# bury the requests' spans. Regexes over the request's URL, as the Flask instrumentation reads them.
UNTRACED_REQUESTS = r"^[a-z]+://[^/]+/health(\?|$)"
# No span for these calls: Consul's HTTP API (every blocking query and check would be a trace of its own)
# and the exporter's own POST /v1/traces; both live under /v1/, and no service's route does.
UNTRACED_CALLS = r"^[a-z]+://[^/]+/v1/"

# This process's tracer provider once set up; set up at most once per process (gunicorn's worker, after
# the fork: the exporter's thread would not survive it).
_provider: Any = None
_set_up = False


def setup(service_name: str, instance_id: str, env: Mapping[str, str] | None = None) -> Any:
    """The process's tracer provider, or None when no endpoint is set or OpenTelemetry (the SDK, its OTLP
    exporter and the two instrumentations) is not importable. Calls made with requests are traced from here on."""
    global _provider, _set_up
    if _set_up:
        return _provider
    _set_up = True
    env = os.environ if env is None else env
    if not (env.get(ENDPOINT) or env.get(TRACES_ENDPOINT)):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http import trace_exporter
        from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: F401 - checked here, used below
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("%s is set but OpenTelemetry is not installed (%s): no spans are exported", ENDPOINT, exc)
        return None
    resource = Resource.create({"service.name": service_name, "service.instance.id": instance_id})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(trace_exporter.OTLPSpanExporter()))
    # The global provider, so any other library's instrumentation joins the same traces.
    trace.set_tracer_provider(provider)
    RequestsInstrumentor().instrument(
        tracer_provider=provider, excluded_urls=UNTRACED_CALLS, request_hook=_name_client_span
    )
    _provider = provider
    log.info("exporting OpenTelemetry spans to %s", env.get(TRACES_ENDPOINT) or env.get(ENDPOINT))
    return provider


def _name_client_span(span: Any, request: requests.PreparedRequest) -> None:
    # The instrumentation names a call by its method alone; the path says which service's route it reached.
    if span.is_recording():
        span.update_name(f"{request.method} {urlsplit(str(request.url)).path}")


def instrument_app(app: Flask) -> bool:
    """Give each request of `app` its server span, once setup() has a provider; whether it did. Before any
    other before_request hook, so the span (and its trace id) is there when the request's id is bound."""
    if _provider is None:
        return False
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    # No SQL commenter: there is no SQL here, and it attaches a context it never detaches.
    FlaskInstrumentor.instrument_app(
        app, tracer_provider=_provider, excluded_urls=UNTRACED_REQUESTS, enable_commenter=False
    )
    return True


def current_trace_id() -> str | None:
    """The trace id (32 hex digits) of the current span, when one is being recorded."""
    if _provider is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return format(span.get_span_context().trace_id, "032x") if span.is_recording() else None


def tag_request(request_id: str) -> None:
    """Write the request's id on its server span, to find the trace from a log line and back."""
    if _provider is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attribute("request_id", request_id)


def shutdown() -> None:
    """Export what is still buffered (a worker's exit)."""
    if _provider is not None:
        _provider.shutdown()


def uninstrument() -> None:
    """Stop tracing the calls made with requests (the tests' clean-up; a worker never needs it)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    RequestsInstrumentor().uninstrument()


def install(app: Flask, service_name: str, instance_id: str) -> None:
    """When OpenTelemetry is set up, each request's server span (the Flask instrumentation), its export at
    the worker's exit. Install it before servicekit.request_id, whose hook then finds the span begun and
    adopts it (adopt_span)."""
    if setup(service_name, instance_id) is not None:
        # Exports what is still buffered when the worker exits.
        on_shutdown(app, shutdown)
    instrument_app(app)


def adopt_span(ctx: RequestContext) -> None:
    """The request's context goes by its server span's trace, when there is one: no traceparent came, so the
    span began a new trace, which the calls sent on must carry, and an id made here is that trace's id, as
    without OpenTelemetry. The span is tagged with the request id."""
    span_trace_id = current_trace_id()
    if span_trace_id is None:
        return
    if ctx.request_id == ctx.trace_id:
        ctx.request_id = span_trace_id
    ctx.trace_id = span_trace_id
    tag_request(ctx.request_id)


class Session(requests.Session):
    """A requests session whose calls carry the current request's X-Request-ID and traceparent. The
    facade's one seam for propagation: every call to another service goes through its session. When
    OpenTelemetry is set up, its requests instrumentation makes the call's client span and writes that
    span's context over this traceparent."""

    def request(self, method, url, *args, **kwargs):
        ctx = current()
        if ctx is not None:
            kwargs["headers"] = {**ctx.outgoing_headers(), **(kwargs.get("headers") or {})}
        return super().request(method, url, *args, **kwargs)
