"""The spans a service makes when OpenTelemetry is set up: a server span per request in the caller's trace,
tagged with the request id, a client span per call to another service whose context goes on in that call's
traceparent, and none for /health or for the calls to Consul's API. In process, with the SDK's in-memory
exporter in place of OTLP's (tests/integration/test_otel_export.py exports over OTLP from real instances)."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask import Flask
from opentelemetry.exporter.otlp.proto.http import trace_exporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from contracts.id_format import parse_traceparent
from devstack import free_port
from servicekit import request_id, tracing
from servicekit.settings import Settings
from servicekit.web import configure_app

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


class Peer:
    """Another service on loopback: answers 200 to any GET and keeps the headers of each."""

    def __init__(self):
        self.headers: list[dict[str, str]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer.headers.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="peer", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def spans(monkeypatch):
    """What the app's spans would have exported, once set up as a worker sets it up (an endpoint in the
    environment), with the exporter kept in memory."""
    exported = InMemorySpanExporter()
    monkeypatch.setattr(trace_exporter, "OTLPSpanExporter", lambda: exported)
    monkeypatch.setenv(tracing.ENDPOINT, "http://127.0.0.1:9")
    monkeypatch.setattr(tracing, "_set_up", False)
    monkeypatch.setattr(tracing, "_provider", None)
    yield exported
    tracing.shutdown()
    tracing.uninstrument()


@pytest.fixture
def peer():
    peer = Peer()
    yield peer
    peer.close()


def _app(peer: Peer) -> Flask:
    app = Flask(__name__)
    configure_app(app, Settings.from_env("facade-service", 8080, env={}))
    app.get("/items/<name>", endpoint="item")(lambda name: {"rid": request_id.current_id()})
    app.get("/health", endpoint="health")(lambda: {"ok": True})

    @app.get("/call/<path:path>")
    def call(path: str):
        return {"status": tracing.Session().get(f"{peer.url}/{path}", timeout=5).status_code}

    return app


def _finished(exported: InMemorySpanExporter) -> list:
    assert tracing._provider is not None
    tracing._provider.force_flush()
    return list(exported.get_finished_spans())


def test_a_request_is_a_server_span_in_the_callers_trace_named_by_its_route_with_its_request_id(spans, peer):
    headers = {"X-Request-ID": "rid-1", "traceparent": f"00-{TRACE}-{PARENT}-01"}
    response = _app(peer).test_client().get("/items/a", headers=headers)
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "rid-1"
    [span] = _finished(spans)
    assert (span.name, span.kind) == ("GET /items/<name>", SpanKind.SERVER)
    assert format(span.context.trace_id, "032x") == TRACE and format(span.parent.span_id, "016x") == PARENT
    assert span.attributes["request_id"] == "rid-1"
    assert span.attributes["http.route"] == "/items/<name>"


def test_with_no_ids_given_the_request_id_is_the_trace_id_of_its_spans(spans, peer):
    response = _app(peer).test_client().get("/items/a")
    [span] = _finished(spans)
    assert response.headers["X-Request-ID"] == format(span.context.trace_id, "032x")
    assert span.attributes["request_id"] == response.headers["X-Request-ID"]


def test_a_call_to_another_service_is_a_client_span_whose_context_goes_on_in_its_traceparent(spans, peer):
    rid = f"rid-{uuid.uuid4().hex}"
    headers = {"X-Request-ID": rid, "traceparent": f"00-{TRACE}-{PARENT}-01"}
    assert _app(peer).test_client().get("/call/logging", headers=headers).json == {"status": 200}
    by_kind = {span.kind: span for span in _finished(spans)}
    server, client = by_kind[SpanKind.SERVER], by_kind[SpanKind.CLIENT]
    assert client.name == "GET /logging"
    assert client.parent.span_id == server.context.span_id and client.context.trace_id == server.context.trace_id
    [sent] = peer.headers
    assert sent["X-Request-ID"] == rid
    traceparent = parse_traceparent(sent["traceparent"])
    assert traceparent is not None and traceparent.trace_id == TRACE
    assert traceparent.parent_id == format(client.context.span_id, "016x")


def test_health_and_calls_to_consuls_api_make_no_spans(spans, peer):
    client = _app(peer).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/health", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}).status_code == 200
    assert client.get("/call/v1/agent/self").json == {"status": 200}
    assert peer.headers, "the call was made"
    assert [(s.name, s.kind) for s in _finished(spans)] == [("GET /call/<path:path>", SpanKind.SERVER)]
