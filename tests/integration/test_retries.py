"""Retries that cannot multiply the load: a slow logging instance under load, counted at the instances.

The logging and messages instances here are stubs in the test process, registered in a Consul agent of
the test's own like real ones (the product's service definition, an HTTP check on /health): they count
every call they receive, and one of them answers its calls slower than the facade's read timeout. The
facade is the real one under gunicorn.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack import Load, check_status, free_port, isolated_agent, start_service, until, wait_passing
from servicekit.registration import service_definition
from servicekit.settings import Settings

TIMEOUT = 10
READ_TIMEOUT = 0.3


class StubInstance:
    """An HTTP server on loopback answering as a logging or messages instance would, after `delay`
    seconds; /health answers at once, so Consul keeps it passing: slow, not dead."""

    def __init__(self, service: str, delay: float = 0.0):
        self.service = service
        self.delay = delay
        self.calls: list[str] = []
        self.busy = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # The facade may have given up on a slow answer and closed the connection.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def _work(self, body: dict) -> None:
                with stub._lock:
                    stub.calls.append(f"{self.command} {self.path}")
                    stub.busy += 1
                try:
                    time.sleep(stub.delay)
                    self._answer(201 if self.command == "POST" else 200, body)
                finally:
                    with stub._lock:
                        stub.busy -= 1

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._answer(200, {"status": "passing"})
                else:
                    # An empty last page, as GET /logging and GET /messages answer it.
                    self._work({"messages": [], "next": None})

            def do_POST(self) -> None:
                sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._work({**sent, "created": True})

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.settings = Settings(service_name=service, port=self.port)
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"stub-{self.port}", daemon=True)

    def start(self, consul) -> StubInstance:
        self._thread.start()
        consul.agent.service.register(**service_definition(self.settings))
        return self

    def stop(self, consul) -> None:
        consul.agent.service.deregister(self.settings.instance_id)
        self.server.shutdown()
        self.server.server_close()

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(call.startswith(prefix) for call in self.calls)


@pytest.fixture
def stubbed(hazelcast_cluster, log_dir, request):
    """A facade whose logging and messages instances are stubs: two quick logging instances, one slow."""
    agent = isolated_agent(hazelcast_cluster, log_dir, name=f"consul-{request.node.name[:40]}")
    client = agent.client()
    stubs = [StubInstance("logging-service"), StubInstance("logging-service"),
             StubInstance("logging-service", delay=3 * READ_TIMEOUT), StubInstance("messages-service")]  # fmt: skip
    started: list[StubInstance] = []
    facade = None
    try:
        for stub in stubs:
            started.append(stub.start(client))
        for stub in stubs:
            until(lambda stub=stub: check_status(client, stub.settings.instance_id) == "passing",
                  timeout=15, what=f"{stub.settings.instance_id} passing")  # fmt: skip
        facade = start_service("facade-service", agent, log_dir, env={"HTTP_READ_TIMEOUT": str(READ_TIMEOUT)})
        wait_passing(agent, facade)
        yield facade, stubs
    finally:
        if facade is not None:
            facade.proc.stop()
        for stub in started:
            stub.stop(client)
        agent.stop()


def test_a_slow_logging_instance_gets_no_more_calls_than_a_tenth_over_the_requests(stubbed):
    facade, stubs = stubbed
    logging_stubs, slow = stubs[:3], stubs[2]
    tag = uuid.uuid4().hex[:6]

    def send(session, n):
        if n % 2:
            return session.get(f"{facade.url}/facade", timeout=TIMEOUT)
        return session.post(f"{facade.url}/facade", json={"msg": f"{tag}-{n}"}, timeout=TIMEOUT)

    with Load(send, clients=8, max_requests=300, max_seconds=30) as load:
        load.finish(timeout=40)
    requests_sent = len(load.outcomes)
    gets = sum(o.seq % 2 for o in load.outcomes)
    # The calls the slow instance is still sleeping on are counted when they arrive; wait for them to end.
    until(lambda: slow.busy == 0, timeout=5, what="the slow instance done with its calls")
    received = sum(s.count() for s in logging_stubs)
    assert requests_sent == 300
    assert received <= 1.1 * requests_sent, (
        f"{received} calls at the logging instances for {requests_sent} requests "
        f"(slow one: {slow.count()}, GET /logging: {sum(s.count('GET') for s in logging_stubs)})"
    )
    # A read that timed out is never sent to another instance: one GET /logging per GET /facade.
    assert sum(s.count("GET") for s in logging_stubs) == gets
    assert slow.count() > 0, "the slow instance was in rotation"
    assert len(load.succeeded()) >= requests_sent / 2, "the quick instances still answered"
