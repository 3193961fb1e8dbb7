"""The services' HTTP check, as Consul (the version we ship) runs it: one failed /health does not take an
instance out of rotation; failures in a row do.

The instance is a stub in the test process whose /health fails when told to, registered in a Consul agent
of the test's own with the product's service definition (servicekit.registration.service_definition).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devstack import ConsulAgent, check_status, eventually, free_port, record
from servicekit.consul_client import make_consul
from servicekit.discovery import ServiceWatch
from servicekit.registration import service_definition
from servicekit.settings import ConsulSettings, Settings

SERVICE = "logging-service"


class HealthStub:
    """/health answers 200, or 503 while `fail_next` > 0 (one fewer each time) or `failing` is set."""

    def __init__(self):
        self.fail_next = 0
        self.failing = False
        self.answers: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with stub._lock:
                    fail = stub.failing or stub.fail_next > 0
                    stub.fail_next = max(0, stub.fail_next - 1)
                    status = 503 if fail else 200
                    stub.answers.append((time.monotonic(), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-stub", daemon=True)

    def start(self) -> HealthStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answered_since(self, since: float, status: int) -> int:
        with self._lock:
            return len([1 for at, s in self.answers if at > since and s == status])


@pytest.fixture
def agent(log_dir):
    agent = ConsulAgent(log_dir, name="consul-check-thresholds").start()
    yield agent
    agent.stop()


@pytest.fixture
def registered(agent):
    """A stub instance registered as the services register themselves, and a watch like the facade's."""
    stub = HealthStub().start()
    settings = Settings(
        service_name=SERVICE, port=stub.port, consul=ConsulSettings.from_env(env={"CONSUL_HTTP_ADDR": agent.addr})
    )
    client = agent.client()
    client.agent.service.register(**service_definition(settings))
    watch = ServiceWatch(make_consul(settings.consul), SERVICE, wait="5s").start()
    try:
        eventually(lambda: _passing(client, watch, settings.instance_id), timeout=15, what="the stub passing")
        yield stub, client, watch, settings.instance_id
    finally:
        watch.stop()
        stub.stop()


def _passing(client, watch, instance_id):
    assert check_status(client, instance_id) == "passing"
    assert [i.id for i in watch.instances()] == [instance_id]


def test_one_failed_health_check_leaves_the_instance_passing_and_in_rotation(registered):
    stub, client, watch, instance_id = registered
    seen: list[tuple[str | None, list[str]]] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            seen.append((check_status(client, instance_id), [i.id for i in watch.instances()]))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        failed_from = time.monotonic()
        stub.fail_next = 1

        def failed_once_then_passed_twice():
            assert stub.answered_since(failed_from, 503) == 1
            assert stub.answered_since(failed_from, 200) >= 2

        eventually(failed_once_then_passed_twice, timeout=10, what="one failed /health, then two good ones")
    finally:
        stop.set()
        sampler.join(5)
    assert seen, "nothing sampled"
    flapped = [s for s in seen if s != ("passing", [instance_id])]
    assert flapped == [], f"the instance left passing or the rotation: {flapped[:3]}"


def test_failures_in_a_row_turn_the_instance_critical_and_out_of_rotation(registered, log_dir):
    stub, client, watch, instance_id = registered
    stub.failing = True
    started = time.monotonic()

    def critical_and_out():
        assert check_status(client, instance_id) == "critical"
        assert watch.instances() == ()

    eventually(critical_and_out, timeout=10, interval=0.05, what="critical after failures in a row")
    took = time.monotonic() - started
    failures = stub.answered_since(started, 503)
    assert failures >= 2, f"critical after {failures} failed check(s), in {took:.1f} s"
    record(log_dir, "check-thresholds", {"failing_to_out_of_rotation_s": round(took, 2), "failed_checks": failures})
