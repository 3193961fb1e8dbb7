"""What the facade's nginx answers itself (conf/nginx.conf.tmpl: 413, 431, 400 before gunicorn sees the
request) is JSON carrying the request's id, chosen by servicekit/id_format.py's rules, and is in nginx's
access log with that id; what it passes on reaches the facade with the client's Host and ids unchanged."""

from __future__ import annotations

import json
import re
import socket
import uuid

import pytest
import requests

from contracts import id_format
from devstack import eventually

TIMEOUT = 10
# nginx's large_client_header_buffers: 16 lines of 4 KiB at most.
HEAD_TOO_LARGE = 16 * 4096


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


def error(answer: bytes) -> str:
    assert header(answer, "Content-Type") == "application/json", answer[:300]
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


def too_large(port: int, headers: bytes = b"") -> bytes:
    return raw(
        port,
        b"POST /facade HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + headers + b"Content-Length: 2000000\r\nConnection: close\r\n\r\n",
    )  # fmt: skip


def test_what_the_front_door_refuses_is_json_with_the_request_id_and_logged(stack):
    port = stack.facade.port
    refused = too_large(port, b"X-Request-ID: refused-413-a\r\n")
    assert refused.startswith(b"HTTP/1.1 413 "), refused[:200]
    assert header(refused, "X-Request-ID") == "refused-413-a"
    assert "larger than" in error(refused)

    head = raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * HEAD_TOO_LARGE + b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), head[:200]
    assert re.fullmatch(r"[0-9a-f]{32}", header(head, "X-Request-ID") or ""), "a new id"
    assert error(head) == "request header section too large"

    malformed = raw(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
    assert malformed.startswith(b"HTTP/1.1 400 "), malformed[:200]
    assert error(malformed) == "malformed request"

    def logged():
        log = stack.facade.front.log_path.read_text()
        assert re.search(r'"POST /facade HTTP/1\.1" 413 .* rid=refused-413-a ', log), log[-2000:]

    eventually(logged, timeout=5, interval=0.1)


@pytest.mark.parametrize(
    "given, traceparent, expected",
    [
        ("svc-123:4", None, "svc-123:4"),
        ("has space", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01", "ab" * 16),
        ("x" * 129, "01-" + "ab" * 16 + "-" + "cd" * 8 + "-01-later", "ab" * 16),
        (None, "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01-more", None),
        (None, "ff-" + "ab" * 16 + "-" + "cd" * 8 + "-01", None),
        (None, "00-" + "0" * 32 + "-" + "cd" * 8 + "-01", None),
        (None, "00-" + "AB" * 16 + "-" + "cd" * 8 + "-01", None),
    ],
)
def test_the_front_door_and_the_facade_choose_the_same_request_id(stack, given, traceparent, expected):
    headers = b"".join(
        b"%s: %s\r\n" % (name, value.encode())
        for name, value in ((b"X-Request-ID", given), (b"traceparent", traceparent))
        if value is not None
    )
    refused = header(too_large(stack.facade.port, headers), "X-Request-ID")
    answered = requests.get(
        stack.url,
        headers={k: v for k, v in (("X-Request-ID", given), ("traceparent", traceparent)) if v},
        timeout=TIMEOUT,
    ).headers["X-Request-ID"]
    if expected is None:  # a new id each time, 32 hex digits from nginx, a uuid's hex from the facade
        assert re.fullmatch(r"[0-9a-f]{32}", refused or "") and re.fullmatch(r"[0-9a-f]{32}", answered)
        assert id_format.request_id_for(given, traceparent) not in (refused, answered)
    else:
        assert refused == answered == id_format.request_id_for(given, traceparent) == expected


def test_the_facade_gets_the_clients_host_and_refuses_one_it_does_not_serve(stack):
    rid = str(uuid.uuid4())
    refused = requests.get(stack.url, headers={"Host": "evil.example", "X-Request-ID": rid}, timeout=TIMEOUT)
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (421, rid)
    assert "error" in refused.json()
    assert requests.get(stack.url, headers={"Host": f"localhost:{stack.facade.port}"}, timeout=TIMEOUT).ok
