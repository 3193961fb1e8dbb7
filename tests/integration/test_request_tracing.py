"""One request followed end to end on a real stack: its X-Request-ID is echoed, written on every hop's log
lines (facade, the logging instance, the consumer that took it), and ./scripts/trace prints the hops in order."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from devstack import ROOT, check_status, eventually, free_port
from servicekit.registration import service_definition
from servicekit.request_id import parse_traceparent
from servicekit.settings import Settings

JSON = {"Content-Type": "application/json"}


def _trace(rid: str, log_dir) -> list[str]:
    done = subprocess.run(
        [str(ROOT / "scripts" / "trace"), rid, "--logs", str(log_dir)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _lines_with(service, rid: str) -> list[str]:
    return [line for line in service.proc.log_path.read_text(errors="replace").splitlines() if rid in line]


def _post(stack, rid: str, **kwargs) -> requests.Response:
    return requests.post(stack.url, json={"msg": "followed"}, headers={"X-Request-ID": rid}, timeout=10, **kwargs)


def test_one_request_is_followed_through_every_hop_and_trace_prints_them_in_order(own_stack):
    stack = own_stack(logging=1, messages=1)
    rid = f"test-{uuid.uuid4().hex}"
    response = _post(stack, rid)
    assert response.status_code == 201, response.text
    assert response.headers["X-Request-ID"] == rid
    facade, logger, consumer = stack.facade, stack.logging[0], stack.messages[0]

    def every_hop_logged():
        for service in (facade, logger, consumer):
            assert _lines_with(service, rid), f"no line with {rid} in {service.proc.log_path}"

    eventually(every_hop_logged, 15, what="the request id in the facade's, logging's and consumer's logs")
    assert all(f" rid={rid}] " in line for line in _lines_with(consumer, rid))

    hops = _trace(rid, stack.log_dir)
    order = [next(i for i, line in enumerate(hops) if s.instance_id in line) for s in (facade, logger, consumer)]
    assert order == sorted(order), "\n".join(hops)
    assert any("queueing" in line and facade.instance_id in line for line in hops), "\n".join(hops)

    # Errors echo it too: a body the facade does not take (415), then no logging instance left (503).
    refused = requests.post(
        stack.url, data="hi", headers={"X-Request-ID": rid, "Content-Type": "text/plain"}, timeout=10
    )
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (415, rid)
    logger.proc.send_signal(signal.SIGTERM)
    logger.proc.stop()

    def unavailable():
        answer = _post(stack, rid)
        assert answer.status_code == 503, answer.text
        return answer

    assert (
        eventually(unavailable, 20, interval=0.3, what="503 once the logging instance left").headers["X-Request-ID"]
        == rid
    )


def test_log_format_json_writes_parseable_lines_that_carry_the_request_id(own_stack):
    stack = own_stack(logging=1, messages=1, env={"LOG_FORMAT": "json"})
    rid = uuid.uuid4().hex
    assert _post(stack, rid).status_code == 201

    def carried_everywhere():
        for service in stack.instances:
            lines = [json.loads(line) for line in service.proc.log_path.read_text().splitlines() if line.strip()]
            mine = [line for line in lines if line["request_id"] == rid]
            assert mine, f"no JSON line with request_id {rid} in {service.proc.log_path}"
            assert {line["instance"] for line in mine} == {service.instance_id}

    eventually(carried_everywhere, 15, what="JSON lines with the request id on every hop")
    hops = _trace(rid, stack.log_dir)
    for service in (stack.facade, stack.logging[0], stack.messages[0]):
        assert any(service.instance_id in hop for hop in hops), "\n".join(hops)


class FailingLoggingInstance:
    """A logging instance whose /health passes and whose POST /logging answers 500, registered in the
    test's Consul like a real one; it keeps the headers of every POST it got."""

    def __init__(self):
        self.posts: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_GET(self) -> None:
                self._answer(200)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                stub.posts.append(dict(self.headers))
                self._answer(500)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.settings = Settings(service_name="logging-service", port=self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, name="failing-logging", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_retried_request_shows_every_attempt_and_each_instance_got_the_ids(own_stack):
    stack = own_stack(logging=1, messages=1)
    consul = stack.agent.client()
    failing = FailingLoggingInstance()
    try:
        consul.agent.service.register(**service_definition(failing.settings))
        failing_id = failing.settings.instance_id
        eventually(lambda: check_status(consul, failing_id) == "passing" or None, 15, what="the stub passing")
        # Random picks: until one request went to the failing instance first (1 in 2 each time).
        for _ in range(20):
            rid, trace_id = f"retry-{uuid.uuid4().hex}", uuid.uuid4().hex
            traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
            answer = requests.post(
                stack.url,
                json={"msg": "retried"},
                headers={"X-Request-ID": rid, "traceparent": traceparent},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
            if failing.posts and failing.posts[-1].get("X-Request-ID") == rid:
                break
        else:
            raise AssertionError("no request went to the failing instance in 20")
        sent = parse_traceparent(failing.posts[-1]["traceparent"])
        assert sent is not None and sent.trace_id == trace_id
        logger = stack.logging[0]
        eventually(lambda: _lines_with(logger, rid) and _lines_with(stack.messages[0], rid), 15, what="hops logged")
        hops = _trace(rid, stack.log_dir)
        failed = next(i for i, h in enumerate(hops) if f"{failing_id} failed (HTTP 500)" in h)
        stored = next(i for i, h in enumerate(hops) if logger.instance_id in h and "stored" in h)
        assert failed < stored, "\n".join(hops)
    finally:
        consul.agent.service.deregister(failing.settings.instance_id)
        failing.close()
