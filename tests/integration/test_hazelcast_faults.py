"""Faults of the shared state: a Hazelcast member killed under load, a consumer killed mid-stream, no
cluster at all when a service starts.

These destroy processes, so they run on a Consul agent, a Hazelcast cluster and services of their own,
never on the session `stack`. The figures they measure go to tests/.logs/<run>/<name>.json and into
docs/RELIABILITY.md.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass

import hazelcast
import pytest
import requests

from contracts import queue_item
from devstack import (
    ConsulAgent,
    HazelcastCluster,
    Load,
    Outcome,
    Service,
    Stack,
    eventually,
    read_all,
    record,
    running_stack,
    start_service,
    wait_passing,
)
from servicekit.hz import WAITING_LOG_INTERVAL

# One worker for the module: its tests share `faults` (a whole stack of its own), which every worker would
# build again.
pytestmark = pytest.mark.xdist_group("hazelcast_faults")

TIMEOUT = 10


@dataclass
class FaultStack:
    stack: Stack
    client: hazelcast.HazelcastClient

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def cluster(self) -> HazelcastCluster:
        return self.stack.cluster

    @property
    def services(self) -> list[Service]:
        return self.stack.instances

    @property
    def messages(self) -> list[Service]:
        return self.stack.messages

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
    with running_stack(log_dir / "hazelcast-faults", members=3, logging=2, messages=2, facades=1) as stack:
        client = hazelcast.HazelcastClient(
            cluster_name=stack.cluster.cluster_name, cluster_members=stack.cluster.addresses, cluster_connect_timeout=30
        )
        try:
            # The cluster's start waits for each member's check only. One backup covers one failure in a
            # formed cluster; a member killed during the migrations that follow its join is a second fault.
            eventually(lambda: assert_rebalanced(client, 3), 90, interval=0.5, what="partitions spread over 3 members")
            yield FaultStack(stack, client)
        finally:
            client.shutdown()


def paced_posts(url: str, count: int, interval: float) -> Load:
    """POSTs at a steady pace from one client, bounded in count; every outcome is kept."""
    tag = uuid.uuid4().hex[:6]
    return Load(
        lambda s, n: s.post(url, json={"msg": f"load-{tag}-{n}"}, timeout=TIMEOUT),
        clients=1,
        max_requests=count,
        rate=1 / interval,
        max_seconds=count * (interval + TIMEOUT),
    )


def acknowledged(load: Load) -> set[str]:
    return {o.body["msg"] for o in load.answered(201)}


def not_acknowledged(load: Load) -> list[Outcome]:
    return [o for o in load.snapshot() if o.status != 201]


def held_by(service: Service) -> list[str]:
    return read_all(f"{service.url}/messages", "messages")


def queue_owner_port(stack: FaultStack) -> int:
    """The member that owns the queue's partition: killing it is the worst case for the queue."""
    partitions = stack.client.partition_service
    owner = partitions.get_partition_owner(partitions.get_partition_id("messages-queue"))
    return next(m.address.port for m in stack.client.cluster_service.get_members() if m.uuid == owner)


def test_killing_a_member_under_load_loses_no_acknowledged_message(faults, log_dir):
    victim_port = queue_owner_port(faults)
    posts = 240
    with paced_posts(faults.url, count=posts, interval=0.05) as load:

        def under_way():
            assert len(load.answered(201)) >= 60

        eventually(under_way, timeout=30, what="load under way")
        killed_at = time.monotonic()
        faults.cluster.members[victim_port].kill9()
        load.finish()
    acked, failed = acknowledged(load), not_acknowledged(load)

    def working_again():
        response = requests.post(faults.url, json={"msg": f"after-{uuid.uuid4()}"}, timeout=TIMEOUT)
        assert response.status_code == 201, response.text
        assert requests.get(faults.url, timeout=TIMEOUT).status_code == 200
        for service in faults.services:
            assert requests.get(f"{service.url}/health", timeout=TIMEOUT).status_code == 200, service.instance_id

    eventually(working_again, timeout=30, what="POST, GET and every /health fine after the member loss")
    recovered_after = time.monotonic() - killed_at

    logged = read_all(faults.url, "logging")
    missing = acked - set(logged)
    assert not missing, f"{len(missing)} acknowledged messages are gone from the log"

    def consumed_exactly_once():
        counts = collections.Counter(m for s in faults.messages for m in held_by(s) if m in acked)
        queued = [queue_item.decode(item) for item in faults.queue().iterator()]
        assert set(counts) == acked, (
            f"{sorted(acked - set(counts))} acknowledged messages not consumed yet; queued: {queued[:5]}"
        )
        assert set(counts.values()) == {1}, "a message was consumed twice"

    eventually(consumed_exactly_once, timeout=30)
    last_failure = max((o.started for o in failed), default=killed_at)
    record(
        log_dir,
        "member-loss",
        {
            "posts": posts,
            "acknowledged": len(acked),
            "failed": [o.kind for o in failed],
            "acknowledged_lost": len(missing),
            "slowest_post_s": round(max(o.seconds for o in load.snapshot()), 2),
            "failures_until_s_after_kill": round(max(0.0, last_failure - killed_at), 2),
            "all_healthy_after_s": round(recovered_after, 2),
        },
    )
    # Failed POSTs were, by definition, not acknowledged; there may be a few while partitions move over.
    assert len(failed) <= posts // 10, failed


def test_a_killed_consumer_loses_only_what_it_had_taken_and_the_queue_goes_to_the_other(faults, log_dir):
    victim, survivor = faults.messages
    with paced_posts(faults.url, count=150, interval=0.04) as load:

        def victim_consuming():
            assert len(set(held_by(victim)) & acknowledged(load)) >= 20

        eventually(victim_consuming, timeout=30, what="the victim consuming this load")
        # Its last answer, then kill -9 straight away: what it took after this answer is lost with its memory.
        last_seen = set(held_by(victim))
        victim.proc.kill9()
        load.finish()
    acked = acknowledged(load)
    assert not not_acknowledged(load), not_acknowledged(load)

    def queue_drained():
        assert faults.queue().size() == 0

    eventually(queue_drained, timeout=30, what="the survivor takes every queued item")
    survived = held_by(survivor)
    ours_seen = last_seen & acked
    assert not set(survived) & ours_seen, "a message was consumed twice"
    assert len(survived) == len(set(survived))
    lost = acked - ours_seen - set(survived)
    record(
        log_dir,
        "consumer-crash",
        {
            "acknowledged": len(acked),
            "victim_last_seen": len(ours_seen),
            "survivor_consumed": len(set(survived) & acked),
            "lost_with_the_victim": len(lost),
        },
    )
    # The consumer takes one item at a time and exposes it at once; the window is the item in its hands.
    assert len(lost) <= 2, sorted(lost)


def test_a_service_started_without_hazelcast_boots_answers_503_and_turns_200_when_the_cluster_starts(log_dir):
    module_logs = log_dir / "hazelcast-late"
    agent = ConsulAgent(module_logs).start()
    # Two members, the smallest cluster that takes writes (split-brain protection, conf/hazelcast.xml): a
    # logging instance is ready once it has brought the log's size up to what the map holds, which is a write.
    cluster = HazelcastCluster(agent, module_logs, size=2)
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
