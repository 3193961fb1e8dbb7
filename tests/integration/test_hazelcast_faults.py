"""Faults of the shared state: a Hazelcast member killed under load, a consumer killed mid-stream, no
cluster at all when a service starts.

These destroy processes, so they run on a Consul agent, a Hazelcast cluster and services of their own,
never on the session `stack`. The figures they measure go to tests/.logs/<run>/<name>.json and into
docs/RELIABILITY.md.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import hazelcast
import pytest
import requests

from infra import ConsulAgent, HazelcastCluster, Service, eventually, record, start_service, wait_passing

from servicekit import queue_item
from servicekit.hz import WAITING_LOG_INTERVAL

TIMEOUT = 10


@dataclass
class FaultStack:
    agent: ConsulAgent
    cluster: HazelcastCluster
    facade: Service
    logging: list[Service]
    messages: list[Service]
    client: hazelcast.HazelcastClient

    @property
    def url(self) -> str:
        return f"{self.facade.url}/facade"

    @property
    def services(self) -> list[Service]:
        return [self.facade, *self.logging, *self.messages]

    def queue(self):
        return self.client.get_queue("messages-queue").blocking()


def assert_rebalanced(client: hazelcast.HazelcastClient, size: int) -> None:
    members = {m.uuid for m in client.cluster_service.get_members()}
    assert len(members) == size, f"{len(members)} members"
    # Hazelcast assigns partitions on the first partition operation; until then nobody owns any.
    client.get_map("rebalance-probe").blocking().get("probe")
    partitions = client.partition_service
    owners = {partitions.get_partition_owner(p) for p in range(partitions.get_partition_count())}
    assert owners == members, "partitions not spread over every member yet"


@pytest.fixture(scope="module")
def faults(log_dir):
    """3 members, 1 facade, 2 logging and 2 messages instances, all of this module's own."""
    module_logs = log_dir / "hazelcast-faults"
    agent = ConsulAgent(module_logs).start()
    cluster = HazelcastCluster(agent, module_logs)
    services: list[Service] = []
    client = None
    try:
        cluster.start()
        client = hazelcast.HazelcastClient(
            cluster_name=cluster.cluster_name, cluster_members=cluster.addresses, cluster_connect_timeout=30
        )
        # cluster.start() waits for each member's port only. One backup covers one failure in a formed
        # cluster; a member killed during the migrations that follow its join is a second fault.
        eventually(lambda: assert_rebalanced(client, 3), 90, interval=0.5, what="partitions spread over 3 members")
        services = [
            start_service("facade-service", agent, module_logs),
            *(start_service("logging-service", agent, module_logs) for _ in range(2)),
            *(start_service("messages-service", agent, module_logs) for _ in range(2)),
        ]
        for service in services:
            wait_passing(agent, service)
        yield FaultStack(agent, cluster, services[0], services[1:3], services[3:5], client)
    finally:
        if client is not None:
            client.shutdown()
        for service in services:
            service.proc.stop()
        cluster.stop()
        agent.stop()


@dataclass
class Load:
    """POSTs at a steady pace from one thread, bounded in count; every outcome is kept."""

    url: str
    count: int
    interval: float
    acknowledged: list[tuple[float, str]] = field(default_factory=list)
    failed: list[tuple[float, str, str]] = field(default_factory=list)
    slowest: float = 0.0

    def __post_init__(self):
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(self.count * (self.interval + TIMEOUT))
        assert not self._thread.is_alive(), "the load did not finish"

    def _run(self) -> None:
        session = requests.Session()
        tag = uuid.uuid4().hex[:6]
        for i in range(self.count):
            started = time.monotonic()
            msg = f"load-{tag}-{i}"
            try:
                response = session.post(self.url, json={"msg": msg}, timeout=TIMEOUT)
                outcome = response.status_code
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            elapsed = time.monotonic() - started
            self.slowest = max(self.slowest, elapsed)
            if outcome == 201:
                self.acknowledged.append((started, msg))
            else:
                self.failed.append((started, msg, str(outcome)))
            time.sleep(max(0.0, self.interval - elapsed))

    @property
    def acked(self) -> set[str]:
        return {msg for _, msg in self.acknowledged}


def held_by(service: Service) -> list[str]:
    return requests.get(f"{service.url}/messages", timeout=TIMEOUT).json()["messages"]


def queue_owner_port(stack: FaultStack) -> int:
    """The member that owns the queue's partition: killing it is the worst case for the queue."""
    partitions = stack.client.partition_service
    owner = partitions.get_partition_owner(partitions.get_partition_id("messages-queue"))
    return next(m.address.port for m in stack.client.cluster_service.get_members() if m.uuid == owner)


def test_killing_a_member_under_load_loses_no_acknowledged_message(faults, log_dir):
    victim_port = queue_owner_port(faults)
    load = Load(faults.url, count=240, interval=0.05).start()
    def under_way():
        assert len(load.acknowledged) >= 60

    eventually(under_way, timeout=30, what="load under way")
    killed_at = time.monotonic()
    faults.cluster.members[victim_port].kill9()
    load.join()

    def working_again():
        response = requests.post(faults.url, json={"msg": f"after-{uuid.uuid4()}"}, timeout=TIMEOUT)
        assert response.status_code == 201, response.text
        assert requests.get(faults.url, timeout=TIMEOUT).status_code == 200
        for service in faults.services:
            assert requests.get(f"{service.url}/health", timeout=TIMEOUT).status_code == 200, service.instance_id

    eventually(working_again, timeout=30, what="POST, GET and every /health fine after the member loss")
    recovered_after = time.monotonic() - killed_at

    logged = requests.get(faults.url, timeout=TIMEOUT).json()["logging"]
    missing = load.acked - set(logged)
    assert not missing, f"{len(missing)} acknowledged messages are gone from the log"

    def consumed_exactly_once():
        counts = collections.Counter(m for s in faults.messages for m in held_by(s) if m in load.acked)
        queued = [queue_item.decode(item) for item in faults.queue().iterator()]
        assert set(counts) == load.acked, (
            f"{sorted(load.acked - set(counts))} acknowledged messages not consumed yet; queued: {queued[:5]}"
        )
        assert set(counts.values()) == {1}, "a message was consumed twice"

    eventually(consumed_exactly_once, timeout=30)
    last_failure = max((t for t, _, _ in load.failed), default=killed_at)
    record(
        log_dir,
        "member-loss",
        {
            "posts": load.count,
            "acknowledged": len(load.acked),
            "failed": [outcome for _, _, outcome in load.failed],
            "acknowledged_lost": len(missing),
            "slowest_post_s": round(load.slowest, 2),
            "failures_until_s_after_kill": round(max(0.0, last_failure - killed_at), 2),
            "all_healthy_after_s": round(recovered_after, 2),
        },
    )
    # Failed POSTs were, by definition, not acknowledged; there may be a few while partitions move over.
    assert len(load.failed) <= load.count // 10, load.failed


def test_a_killed_consumer_loses_only_what_it_had_taken_and_the_queue_goes_to_the_other(faults, log_dir):
    victim, survivor = faults.messages
    load = Load(faults.url, count=150, interval=0.04).start()
    def victim_consuming():
        assert len(set(held_by(victim)) & load.acked) >= 20

    eventually(victim_consuming, timeout=30, what="the victim consuming this load")
    # Its last answer, then kill -9 straight away: what it took after this answer is lost with its memory.
    last_seen = set(held_by(victim))
    victim.proc.kill9()
    load.join()
    assert not load.failed, load.failed

    def queue_drained():
        assert faults.queue().size() == 0

    eventually(queue_drained, timeout=30, what="the survivor takes every queued item")
    survived = held_by(survivor)
    ours_seen = last_seen & load.acked
    assert not set(survived) & ours_seen, "a message was consumed twice"
    assert len(survived) == len(set(survived))
    lost = load.acked - ours_seen - set(survived)
    record(
        log_dir,
        "consumer-crash",
        {
            "acknowledged": len(load.acked),
            "victim_last_seen": len(ours_seen),
            "survivor_consumed": len(set(survived) & load.acked),
            "lost_with_the_victim": len(lost),
        },
    )
    # The consumer takes one item at a time and exposes it at once; the window is the item in its hands.
    assert len(lost) <= 2, sorted(lost)


def test_a_service_started_without_hazelcast_boots_answers_503_and_turns_200_when_the_cluster_starts(log_dir):
    module_logs = log_dir / "hazelcast-late"
    agent = ConsulAgent(module_logs).start()
    cluster = HazelcastCluster(agent, module_logs, size=1)
    service = None
    try:
        cluster.seed_kv()
        started = time.monotonic()
        service = start_service("logging-service", agent, module_logs)

        def unavailable():
            assert service.proc.alive(), service.proc.tail()
            response = requests.get(f"{service.url}/health", timeout=TIMEOUT)
            assert response.status_code == 503 and response.json()["checks"] == {"hazelcast": False}
            post = requests.post(f"{service.url}/logging", json={"id": str(uuid.uuid4()), "msg": "x"}, timeout=TIMEOUT)
            assert post.status_code == 503 and post.json() == {"error": "the Hazelcast cluster is unavailable"}

        eventually(unavailable, timeout=30, what="gunicorn booted without a cluster")
        booted_after = time.monotonic() - started

        def says_it_waits():
            assert "not connected to Hazelcast cluster" in service.proc.log_path.read_text()

        eventually(says_it_waits, timeout=WAITING_LOG_INTERVAL + 10, interval=0.5)
        cluster_started = time.monotonic()
        cluster.start()

        def healthy():
            assert requests.get(f"{service.url}/health", timeout=TIMEOUT).status_code == 200

        eventually(healthy, timeout=60, interval=0.2, what="/health 200 once the cluster is up")
        wait_passing(agent, service, timeout=10)
        log_text = service.proc.log_path.read_text()
        assert "connected to Hazelcast cluster" in log_text
        record(
            log_dir,
            "hazelcast-late",
            {
                "health_503_after_boot_s": round(booted_after, 2),
                "health_200_after_cluster_start_s": round(time.monotonic() - cluster_started, 2),
            },
        )
    finally:
        if service is not None:
            service.proc.stop()
        cluster.stop()
        agent.stop()
