"""What the worker's event loop answers itself (servicekit/workers.py: 413, 431, 400 before Flask sees the
request) carries the request's id and is counted, like every answer Flask gives."""

from __future__ import annotations

import re
import socket

import requests
from prometheus_client.parser import text_string_to_metric_families

from devstack import metrics_url, wait_passing
from servicekit.workers import MAX_HEADER_BYTES

TIMEOUT = 10


def raw(port: int, data: bytes) -> bytes:
    """Send bytes, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def header(answer: bytes, name: str) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    found = re.search(rf"^{re.escape(name)}: (.*)$", head, re.MULTILINE | re.IGNORECASE)
    return found.group(1).strip() if found else None


def refusals(agent, service) -> dict[tuple[str, str], float]:
    """(method, status) -> count of http_requests_total under the route "unmatched"."""
    text = requests.get(metrics_url(agent, service), timeout=TIMEOUT).text
    return {
        (s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_requests_total" and s.labels.get("route") == "unmatched"
    }


def test_a_body_or_head_the_loop_refuses_is_answered_with_the_request_id_and_counted(consul_agent, start_instance):
    service = wait_passing(consul_agent, start_instance("logging-service"))
    too_large = raw(
        service.port,
        b"POST /logging HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: refused-413-a\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
    )
    assert too_large.startswith(b"HTTP/1.1 413 "), too_large[:200]
    assert header(too_large, "X-Request-ID") == "refused-413-a"

    head_too_large = raw(service.port, b"GET /health HTTP/1.1\r\nX: " + b"a" * (MAX_HEADER_BYTES + 10))
    assert head_too_large.startswith(b"HTTP/1.1 431 "), head_too_large[:200]
    assert re.fullmatch(r"[0-9a-f]{32}", header(head_too_large, "X-Request-ID") or ""), "a new id"

    # Counted before the answer is sent, in whichever worker's file; the scrape adds the workers up.
    assert refusals(consul_agent, service) == {("POST", "413"): 1, ("unknown", "431"): 1}
