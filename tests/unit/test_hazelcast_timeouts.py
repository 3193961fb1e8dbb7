"""The Hazelcast client's timeouts, against the members' detection time, and the bound on every call's wait
(servicekit/hz.py). The futures are the library's own; nothing here talks to a member."""

from __future__ import annotations

import threading
import time

import pytest
from hazelcast.errors import HazelcastError, OperationTimeoutError
from hazelcast.future import Future
from hazelcast.lifecycle import LifecycleState

import facade
import logging_svc.store
import messages_svc.consumer
from devstack import until
from facade.settings import FacadeSettings
from servicekit import hz
from servicekit.errors import HazelcastUnavailable
from servicekit.kvconfig import SharedConfig
from servicekit.settings import Settings
from stackctl.hazelcast_member import member_property


class SilentMap:
    """A map whose member does not answer (its host cut off): the futures it hands out stay pending."""

    def __init__(self):
        self.name = "silent"
        self.sent: list[Future] = []

    def get(self, key):
        self.sent.append(Future())
        return self.sent[-1]


def test_a_call_that_gets_no_answer_gives_up_at_its_timeout():
    proxy = hz.Bounded(SilentMap(), timeout=0.2)
    started = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        proxy.get("k")
    assert 0.2 <= time.monotonic() - started < 1.0
    assert proxy.name == "silent", "what is not a call is passed through"


def test_an_answer_within_the_timeout_is_returned_and_a_failure_raised():
    answered: Future = Future()
    answered.set_result("v")
    assert hz.wait(answered, 0.1) == "v"
    failed: Future = Future()
    failed.set_exception(HazelcastError("member gone"))
    with pytest.raises(HazelcastError, match="member gone"):
        hz.wait(failed, 0.1)


def test_the_client_leaves_a_silent_member_before_the_members_drop_it():
    """After a cut, the members publish a new member list and partition table once they drop the silent
    member; a client still listening to that member would miss them (issue 18: a minute of failed POSTs)."""
    members_drop_after = float(member_property("hazelcast.max.no.heartbeat.seconds"))
    # The client closes a connection it read nothing from for HEARTBEAT_TIMEOUT, looked at every interval.
    assert members_drop_after > hz.HEARTBEAT_TIMEOUT + hz.HEARTBEAT_INTERVAL
    # ...and not for a pause a healthy member makes: it answers the pings every interval.
    assert hz.HEARTBEAT_TIMEOUT >= 5 * hz.HEARTBEAT_INTERVAL


def test_no_call_is_retried_or_waited_for_longer_than_a_request_waits():
    settings = Settings.from_env("logging-service", 8081, env={})
    assert FacadeSettings.from_env("facade-service", 8080, env={}).request_deadline >= hz.INVOCATION_TIMEOUT
    # A logging_svc thread is free again when the facade's read of it gives up.
    assert settings.read_timeout >= hz.Hazelcast(settings).call_timeout
    assert hz.REDO_OPERATION is False, "an offer sent again would queue a message twice"


def test_a_write_on_a_cut_off_member_is_never_acknowledged_within_what_a_request_waits():
    """A write waits for its backup on another host; cut off, none comes, and the member answers all the same
    after the backup timeout. logging_svc must have given up before then, or it would acknowledge an entry
    that only the cut-off side holds."""
    backup_timeout = float(member_property("hazelcast.operation.backup.timeout.millis")) / 1000
    settings = Settings.from_env("logging-service", 8081, env={})
    assert backup_timeout > hz.Hazelcast(settings).call_timeout


class ConnectingClient:
    """The library's client as far as Hazelcast(...) uses it: connected at once, recording each proxy made."""

    def __init__(self, lifecycle_listeners, **options):
        self.made: list[tuple[str, str]] = []
        for listener in lifecycle_listeners:
            listener(LifecycleState.CONNECTED)

    def get_map(self, name):
        self.made.append(("map", name))
        return SilentMap()

    def get_queue(self, name):
        self.made.append(("queue", name))

    def get_pn_counter(self, name):
        self.made.append(("pn_counter", name))

    def shutdown(self):
        pass


@pytest.mark.parametrize(
    ("structures", "made"),
    [
        (facade.structures, [("map", "log.idempotency"), ("queue", "q")]),
        (logging_svc.store.structures, [("map", "log"), ("pn_counter", "log-bytes")]),
        (messages_svc.consumer.structures, [("queue", "q")]),
    ],
    ids=["facade", "logging", "messages"],
)
def test_once_connected_the_client_makes_every_proxy_its_service_names_before_any_request(
    monkeypatch, structures, made
):
    """Making a proxy is a call to the cluster that nothing bounds (Hazelcast._create_proxies): each service
    names its structures after the names in Consul KV, and its client makes them on connect."""
    clients: list[ConnectingClient] = []
    monkeypatch.setattr(hz.kvconfig, "load", lambda consul: SharedConfig("dev", ("127.0.0.1:1",), "log", "q"))

    def build(**options) -> ConnectingClient:
        clients.append(ConnectingClient(**options))
        return clients[-1]

    monkeypatch.setattr(hz.hazelcast, "HazelcastClient", build)
    settings = Settings.from_env("logging-service", 8081, env={"HTTP_READ_TIMEOUT": "0.3"})
    service_hz = hz.Hazelcast(settings, structures)
    with pytest.raises(HazelcastUnavailable):
        service_hz.get_map("log")
    service_hz.start()
    try:
        until(lambda: bool(clients) and clients[0].made == made, 5, f"the client made {made}")
        # Asked for by name, a map is bounded by call_timeout like every call of a request.
        bounded = service_hz.get_map(service_hz.shared_config().map_name)
        started = time.monotonic()
        with pytest.raises(OperationTimeoutError):
            bounded.get("k")
        assert time.monotonic() - started < settings.read_timeout + 1.0
    finally:
        service_hz.close()


class ConnectsBeforeItReturns:
    """The library's client as async_start makes it: its reactor reports CONNECTED while the constructor
    still runs (listener service, backup listener, statistics), before the caller holds the client."""

    def __init__(self, lifecycle_listeners, **_):
        self.may_return = threading.Event()
        self.built.append(self)
        for listener in lifecycle_listeners:
            listener(LifecycleState.CONNECTED)
        self.may_return.wait(5)

    built: list = []

    def get_map(self, name):
        return SilentMap()

    def shutdown(self):
        pass


def test_a_worker_is_not_connected_until_its_client_is_built_so_no_call_finds_it_missing(monkeypatch):
    monkeypatch.setattr(ConnectsBeforeItReturns, "built", [])
    monkeypatch.setattr(hz.hazelcast, "HazelcastClient", ConnectsBeforeItReturns)
    monkeypatch.setattr(hz, "make_consul", lambda settings: None)
    monkeypatch.setattr(hz.kvconfig, "load", lambda consul: SharedConfig("dev", ("127.0.0.1:1",), "log", "queue"))
    client = hz.Hazelcast(Settings.from_env("logging-service", 8081, env={})).start()
    try:
        until(lambda: bool(ConnectsBeforeItReturns.built), timeout=5, what="the client is being built")
        # The link is up, the constructor has not returned: neither /health nor a call may take it as ready.
        assert not client.wait_connected(0.3)
        with pytest.raises(HazelcastUnavailable):
            client.get_map("log")
        ConnectsBeforeItReturns.built[-1].may_return.set()
        assert client.wait_connected(5)
        assert client.get_map("log").name == "silent"
    finally:
        for built in ConnectsBeforeItReturns.built:
            built.may_return.set()
        client.close()
