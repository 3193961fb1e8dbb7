"""Retries that cannot multiply the load: a slow logging instance under load, and instances that drop the
connection after reading the request, counted at the instances.

The logging and messages instances here are stubs in the test process, registered in a Consul agent of
the test's own like real ones (the product's service definition, an HTTP check on /health): they count
every call they receive, and one of them answers its calls slower than the facade's read timeout. The
facade is the real one under gunicorn.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from devstack import Load, until
from devstack.stubs import StubInstance

TIMEOUT = 10
READ_TIMEOUT = 0.3


@pytest.fixture
def stubbed(facade_before):
    """A facade whose logging and messages instances are stubs: two quick logging instances, one slow."""
    stubs = [StubInstance("logging-service"), StubInstance("logging-service"),
             StubInstance("logging-service", delay=3 * READ_TIMEOUT), StubInstance("messages-service")]  # fmt: skip
    return facade_before(stubs, env={"HTTP_READ_TIMEOUT": str(READ_TIMEOUT)}), stubs


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


def test_a_logging_instance_that_drops_the_post_it_read_makes_logged_null_and_costs_the_retry_budget(facade_before):
    # Both logging instances read the whole POST, then close the connection without answering, as a worker
    # killed mid-request does: each may have stored the message. A budget of one retry per window.
    dropping = [StubInstance("logging-service", drop_posts="close") for _ in range(2)]
    facade = facade_before(
        [*dropping, StubInstance("messages-service")], env={"RETRY_BUDGET_MINIMUM": "1", "RETRY_BUDGET_RATIO": "0"}
    )
    answer = requests.post(f"{facade.url}/facade", json={"msg": f"dropped-{uuid.uuid4()}"}, timeout=TIMEOUT)
    assert answer.status_code == 503, answer.text
    assert answer.json()["logged"] is None, f"the logging instances may have stored it: {answer.text}"
    assert answer.json()["queued"] is False, answer.text
    assert answer.json()["error"] == "logging-service failed and its retry budget is spent", answer.text
    assert [s.count("POST") for s in dropping] == [1, 1], "the first try and the one retry the budget allows"
