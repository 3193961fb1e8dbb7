"""devstack.stubs.DelayProxy hands the real instance what tracing needs: the request id and traceparent."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from devstack import free_port
from devstack.stubs import DelayProxy

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_proxy_forwards_the_request_id_and_traceparent():
    seen: list[dict[str, str]] = []

    class Target(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(dict(self.headers))
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            pass

    target = ThreadingHTTPServer(("127.0.0.1", free_port()), Target)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    proxy = DelayProxy("logging-service", f"http://127.0.0.1:{target.server_address[1]}", delay=0.0)
    proxy.serve()
    try:
        answer = requests.post(
            f"http://127.0.0.1:{proxy.port}/logging",
            json={"id": "1", "msg": "hi"},
            headers={"X-Request-ID": "rid-7", "traceparent": TRACEPARENT},
            timeout=5,
        )
        assert answer.status_code == 201
        assert seen[-1]["X-Request-ID"] == "rid-7"
        assert seen[-1]["traceparent"] == TRACEPARENT
        assert seen[-1]["Content-Type"] == "application/json"
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
        target.shutdown()
        target.server_close()
