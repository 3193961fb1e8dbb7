"""ServiceWatch's handling of Consul's answers, driven by a scripted stand-in for Consul's health endpoint.

Each test feeds the watch thread one answer at a time and learns that the watch applied it when the watch
asks again, so no test sleeps and every step is in a known order.
"""

from __future__ import annotations

import logging
import queue
import threading

import consul
import pytest
import requests

from devstack import eventually
from upstream.watch import ServiceWatch

SERVICE = "logging-service"


def entry(port: int, address: str = "127.0.0.1", checks: tuple[str, ...] = ("passing",)) -> dict:
    return {
        "Service": {"ID": f"{SERVICE}-{port}", "Address": address, "Port": port,
                    "Weights": {"Passing": 10, "Warning": 1}},
        "Node": {"Address": "10.0.0.1"},
        "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, *({"Status": c} for c in checks)],
    }  # fmt: skip


def answer(index: int, *ports: int) -> tuple[str, list[dict]]:
    """What py-consul's health.service returns: the X-Consul-Index (a string) and the entries."""
    return str(index), [entry(p) for p in ports]


class ScriptedConsul:
    """Stands in for consul.Consul: `health.service` takes the next scripted answer (or raises it)."""

    def __init__(self):
        self.health = self
        self.sent_indexes: list[int | None] = []
        self._answers: queue.Queue = queue.Queue()
        self._given = 0
        self._asked = threading.Condition()

    def service(self, service: str, passing: bool = False, index=None, wait=None):
        # Warning instances serve too (with their warning weight): the watch leaves out the critical ones itself.
        assert service == SERVICE and not passing, "the watch asks for every instance of its service"
        with self._asked:
            self.sent_indexes.append(index)
            self._asked.notify_all()
        reply = self._answers.get(timeout=30)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def reply(self, reply, timeout: float = 5.0) -> None:
        """Answer the pending query, then wait until the watch asks again: by then it has applied the answer."""
        self._given += 1
        self._answers.put(reply)
        with self._asked:
            assert self._asked.wait_for(lambda: len(self.sent_indexes) > self._given, timeout), "the watch stalled"

    @property
    def last_sent_index(self):
        return self.sent_indexes[-1]

    def close(self) -> None:
        """Release a query still waiting for an answer (the watch is stopped first, so it just ends)."""
        self._answers.put(requests.ConnectionError("test over"))


@pytest.fixture
def consul_stub():
    return ScriptedConsul()


@pytest.fixture
def watch(consul_stub):
    watch = ServiceWatch(consul_stub, SERVICE).start()
    yield watch
    watch.stop()
    consul_stub.close()


def ports(watch: ServiceWatch) -> list[int]:
    return sorted(i.port for i in watch.instances())


def test_the_watch_blocks_on_the_index_of_the_last_answer(consul_stub, watch):
    consul_stub.reply(answer(100, 8081, 8082))
    assert ports(watch) == [8081, 8082]
    assert consul_stub.sent_indexes == [None, 100]
    assert watch.status()["stale_since"] is None


def test_an_index_that_went_backwards_is_not_sent_again(consul_stub, watch):
    consul_stub.reply(answer(100, 8081))
    consul_stub.reply(answer(7, 8081))
    assert consul_stub.last_sent_index is None, "a lower index means the agent restarted: start over"
    consul_stub.reply(answer(8, 8081))
    assert consul_stub.last_sent_index == 8


def test_after_a_failed_query_the_watch_starts_over_without_an_index(consul_stub, watch):
    consul_stub.reply(answer(100, 8081))
    consul_stub.reply(requests.ConnectionError("agent gone"))
    # A restarted agent would hold a query for index 100 for the whole wait.
    assert consul_stub.last_sent_index is None
    consul_stub.reply(answer(120, 8081))
    assert consul_stub.last_sent_index == 120


def test_no_passing_instance_with_an_index_that_moved_on_empties_the_cache(consul_stub, watch):
    consul_stub.reply(answer(100, 8081, 8082))
    consul_stub.reply(answer(104))
    assert watch.instances() == ()
    status = watch.status()
    assert status["instances"] == [] and status["stale_since"] is None and status["consul"] == "ok"


def test_an_unreachable_consul_keeps_the_last_instances_and_says_since_when(consul_stub, watch):
    consul_stub.reply(answer(100, 8081, 8082))
    consul_stub.reply(requests.ConnectionError("agent gone"))
    assert ports(watch) == [8081, 8082]
    status = watch.status()
    assert status["consul"].startswith("unreachable") and status["stale_since"]
    consul_stub.reply(answer(110, 8082))
    assert ports(watch) == [8082]
    assert watch.status()["stale_since"] is None and watch.status()["consul"] == "ok"


def test_a_refused_token_keeps_the_last_instances_and_says_so(consul_stub, watch):
    consul_stub.reply(answer(100, 8081))
    consul_stub.reply(consul.ACLPermissionDenied("Permission denied"))
    assert ports(watch) == [8081]
    assert watch.status()["consul"] == "unreachable: permission denied" and watch.status()["stale_since"]
    assert consul_stub.last_sent_index is None


def test_an_empty_answer_after_an_outage_with_an_index_that_moved_on_empties_the_cache(consul_stub, watch):
    consul_stub.reply(answer(100, 8081))
    consul_stub.reply(requests.ConnectionError("agent gone"))
    # The same agent (its index moved on) says nothing passes: that is news, not a restart.
    consul_stub.reply(answer(130))
    assert watch.instances() == ()
    assert watch.status()["stale_since"] is None


def test_an_agent_restart_keeps_the_last_instances_until_they_register_again(consul_stub, watch):
    consul_stub.reply(answer(100, 8081, 8082))
    consul_stub.reply(requests.ConnectionError("agent stopping"))
    consul_stub.reply(answer(12))  # a fresh dev agent: a lower index, nothing registered yet
    assert ports(watch) == [8081, 8082]
    stale_since = watch.status()["stale_since"]
    assert stale_since
    consul_stub.reply(answer(15))  # an instance registered, its first check not run yet
    assert ports(watch) == [8081, 8082]
    assert watch.status()["stale_since"] == stale_since
    consul_stub.reply(answer(16, 8082))
    assert ports(watch) == [8082]
    assert watch.status()["stale_since"] is None


def test_an_index_that_went_backwards_without_an_error_also_keeps_the_last_instances(consul_stub, watch):
    consul_stub.reply(answer(100, 8081))
    consul_stub.reply(answer(3))
    assert ports(watch) == [8081]
    assert watch.status()["stale_since"]


def test_the_last_instances_are_dropped_once_they_are_older_than_the_stale_limit(consul_stub):
    watch = ServiceWatch(consul_stub, SERVICE, stale_limit=1.5).start()
    try:
        consul_stub.reply(answer(100, 8081))
        consul_stub.reply(requests.ConnectionError("agent gone"))
        assert ports(watch) == [8081]

        def dropped():
            assert watch.instances() == ()
            assert watch.status()["instances"] == [] and watch.status()["stale_since"]

        eventually(dropped, timeout=4)
        consul_stub.reply(answer(5, 8082))
        assert ports(watch) == [8082] and watch.status()["stale_since"] is None
    finally:
        watch.stop()
        consul_stub.close()


def test_an_empty_service_address_means_the_node_address(consul_stub, watch):
    consul_stub.reply(("100", [entry(8081, address="")]))
    assert [i.url for i in watch.instances()] == ["http://10.0.0.1:8081"]


def test_an_unexpected_error_in_the_watch_is_logged_and_the_watch_keeps_going(consul_stub, watch, caplog):
    consul_stub.reply(answer(100, 8081))
    # An answer the watch cannot read (no "Service" in the entry): not a Consul error, a surprise.
    with caplog.at_level(logging.ERROR):
        consul_stub.reply(("101", [{"Node": {"Address": "10.0.0.1"}}]))
    assert any("watch-logging-service: unexpected KeyError" in r.getMessage() for r in caplog.records)
    assert ports(watch) == [8081]
    consul_stub.reply(answer(102, 8082))
    assert ports(watch) == [8082]


def test_a_warning_instance_is_kept_with_its_warning_weight_and_a_critical_one_is_left_out(consul_stub, watch):
    entries = [entry(8081), entry(8082, checks=("warning",)), entry(8083, checks=("passing", "critical"))]
    consul_stub.reply(("100", entries))
    assert {i.port: i.weight for i in watch.instances()} == {8081: 10, 8082: 1}


def test_an_instance_registered_without_weights_weighs_one(consul_stub, watch):
    bare = entry(8081)
    del bare["Service"]["Weights"]
    consul_stub.reply(("100", [bare]))
    assert [i.weight for i in watch.instances()] == [1]


def test_the_watch_tells_which_instances_consul_lists_critical_ones_included_and_keeps_them_through_a_restart(
    consul_stub,
):
    told: list[tuple[int, bool, frozenset[str] | None]] = []
    watch = ServiceWatch(consul_stub, SERVICE, observe=lambda service, n, answered, registered: told.append(
        (n, answered, registered))).start()  # fmt: skip
    try:
        critical = entry(8083, checks=("critical",))
        consul_stub.reply(("100", [entry(8081), entry(8082), critical]))
        assert told[-1] == (2, True, frozenset({f"{SERVICE}-8081", f"{SERVICE}-8082", f"{SERVICE}-8083"}))
        consul_stub.reply(answer(104, 8082))  # 8081 and 8083 left Consul
        assert told[-1] == (1, True, frozenset({f"{SERVICE}-8082"}))
        consul_stub.reply(requests.ConnectionError("agent stopping"))
        consul_stub.reply(answer(12))  # a restarted agent knows nothing yet: not a sign that 8082 left
        assert told[-1][2] == frozenset({f"{SERVICE}-8082"})
    finally:
        watch.stop()
        consul_stub.close()
