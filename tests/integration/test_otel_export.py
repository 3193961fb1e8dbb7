"""OpenTelemetry export from a real facade and logging instance to an OTLP/HTTP receiver on loopback: the
spans of one request arrive in the trace of the traceparent the client sent, each hop the child of the one
before it."""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from devstack import eventually, free_port


class OtlpReceiver:
    """POST /v1/traces, protobuf: keeps every span as a dict (ids in hex, the service.name of its resource)."""

    def __init__(self):
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    receiver.add(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="otlp-receiver", daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "service": attributes.get("service.name"),
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                        }
                    )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SERVER, CLIENT = 2, 3  # the OTLP SpanKind numbers


def test_the_spans_of_one_request_arrive_in_the_callers_trace(own_stack):
    receiver = OtlpReceiver()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        stack = own_stack(logging=1, messages=1, env=env)
        trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
        posted = requests.post(stack.url, json={"msg": "traced"}, headers=headers, timeout=10)
        assert posted.status_code == 201, posted.text
        assert posted.headers["X-Request-ID"] == trace_id, "with no X-Request-ID the trace id is the request id"
        assert requests.get(stack.url, headers=headers, timeout=10).status_code == 200

        def arrived() -> dict[tuple[str, str, int], dict]:
            mine = {(s["service"], s["name"], s["kind"]): s for s in receiver.spans if s["trace_id"] == trace_id}
            for key in [
                ("facade-service", "POST /facade", SERVER),
                ("facade-service", "POST /logging", CLIENT),
                ("logging-service", "POST /logging", SERVER),
                ("messages-service", "GET /messages", SERVER),
            ]:
                names = [(s["service"], s["name"], s["trace_id"]) for s in receiver.spans]
                assert key in mine, f"no span {key} in trace {trace_id}: {names}"
            return mine

        spans = eventually(arrived, 20, interval=0.2, what="the request's spans at the receiver")
        facade = spans[("facade-service", "POST /facade", SERVER)]
        call = spans[("facade-service", "POST /logging", CLIENT)]
        logged = spans[("logging-service", "POST /logging", SERVER)]
        assert facade["parent"] == parent
        assert call["parent"] == facade["span_id"]
        assert logged["parent"] == call["span_id"]
    finally:
        receiver.close()
