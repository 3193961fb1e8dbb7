"""The services' HTTP check, as Consul (the version we ship) runs it: one failed /health does not take an
instance out of rotation; failures in a row do.

The instance is a stub in the test process whose /health fails when told to (devstack.stubs.StubInstance),
registered in a Consul agent of the test's own with the product's service definition.
"""

from __future__ import annotations

import threading
import time

import pytest

from devstack import check_status, eventually, record
from devstack.stubs import StubInstance
from servicekit.consul_client import make_consul
from servicekit.settings import ConsulSettings
from upstream.watch import ServiceWatch

SERVICE = "logging-service"


@pytest.fixture
def registered(own_agent):
    agent = own_agent
    """A stub instance registered as the services register themselves, and a watch like the facade's."""
    client = agent.client()
    stub = StubInstance(SERVICE)
    stub.start(client)
    watch = ServiceWatch(make_consul(ConsulSettings.from_env(env={"CONSUL_HTTP_ADDR": agent.addr})), SERVICE, wait="5s")
    watch.start()
    try:
        eventually(lambda: _passing(client, watch, stub.instance_id), timeout=15, what="the stub passing")
        yield stub, client, watch, stub.instance_id
    finally:
        watch.stop()
        stub.stop(client)


def _passing(client, watch, instance_id):
    assert check_status(client, instance_id) == "passing"
    assert [i.id for i in watch.instances()] == [instance_id]


def test_one_failed_health_check_leaves_the_instance_passing_and_in_rotation(registered):
    stub, client, watch, instance_id = registered
    seen: list[tuple[str | None, list[str]]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def sample():
        # A failed Consul call ends the sampling: kept, so that a short `seen` fails the test rather than pass it.
        try:
            while not stop.is_set():
                seen.append((check_status(client, instance_id), [i.id for i in watch.instances()]))
                stop.wait(0.05)
        except BaseException as exc:
            errors.append(exc)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        failed_from = time.monotonic()
        stub.health_fail_next = 1

        def failed_once_then_passed_twice():
            assert stub.answered_since(failed_from, 503) == 1
            assert stub.answered_since(failed_from, 200) >= 2

        eventually(failed_once_then_passed_twice, timeout=10, what="one failed /health, then two good ones")
    finally:
        stop.set()
        sampler.join(5)
    assert not sampler.is_alive(), "the sampler did not stop"
    assert errors == [], f"the sampler stopped on {errors[0]!r}"
    assert seen, "nothing sampled"
    flapped = [s for s in seen if s != ("passing", [instance_id])]
    assert flapped == [], f"the instance left passing or the rotation: {flapped[:3]}"


def test_failures_in_a_row_turn_the_instance_critical_and_out_of_rotation(registered, log_dir):
    stub, client, watch, instance_id = registered
    stub.health_status = 503
    started = time.monotonic()

    def critical_and_out():
        assert check_status(client, instance_id) == "critical"
        assert watch.instances() == ()

    eventually(critical_and_out, timeout=10, interval=0.05, what="critical after failures in a row")
    took = time.monotonic() - started
    failures = stub.answered_since(started, 503)
    assert failures >= 2, f"critical after {failures} failed check(s), in {took:.1f} s"
    record(log_dir, "check-thresholds", {"failing_to_out_of_rotation_s": round(took, 2), "failed_checks": failures})
