"""Capacity that is explicit and held: a full log refuses with 507, a full queue with 503 and Retry-After,
neither stores anything; and a flood past the capacity of a small-heap cluster loses no acknowledged
message and kills no member. The flood's figures go to tests/.logs/<run>/flood.json and into
docs/RELIABILITY.md.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET

import hazelcast
import requests

from contracts import queue_item
from devstack import ROOT, Load, eventually, record, running_stack
from logging_svc.settings import default_log_capacity_bytes, java_size_bytes
from logging_svc.store import encode, entry_cost
from servicekit import kvconfig

TIMEOUT = 10
HZ = "{http://www.hazelcast.com/schema/config}"


def queue_max_size() -> int:
    """The queue's bound, as conf/hazelcast.xml sets it for every queue."""
    queue = ET.parse(ROOT / "conf" / "hazelcast.xml").getroot().find(f"{HZ}queue[@name='default']")
    assert queue is not None
    max_size = queue.find(f"{HZ}max-size")
    assert max_size is not None and max_size.text, "conf/hazelcast.xml bounds the queue (max-size)"
    return int(max_size.text)


def names(stack) -> kvconfig.SharedConfig:
    return kvconfig.load(stack.agent.client())


def assert_every_health_is_200(stack) -> None:
    for service in stack.instances:
        assert requests.get(f"{service.url}/health", timeout=TIMEOUT).status_code == 200, service.name


def test_a_full_log_refuses_posts_with_507_stores_nothing_and_still_answers_reads(own_stack, hz_client):
    msg = "x" * 1000
    # Room for three such messages. One logging instance with one worker, so its own count is the whole
    # log's at once (workers share theirs every LogSize.SIZE_REFRESH: the flood test covers that).
    capacity = 3 * entry_cost(str(uuid.uuid4()), encode(msg, time.time_ns()))
    env = {"LOG_CAPACITY_BYTES": str(capacity), "GUNICORN_CMD_ARGS": "--workers 1"}
    stack = own_stack(logging=1, messages=1, env=env)
    shared = names(stack)
    log = hz_client.get_map(shared.map_name).blocking()

    answers = [requests.post(stack.url, json={"msg": msg}, timeout=TIMEOUT) for _ in range(5)]

    assert [a.status_code for a in answers] == [201, 201, 201, 507, 507]
    assert answers[-1].json()["error"] == "the log is full"
    assert log.size() == 3
    eventually(lambda: _assert_consumed(stack, 3), TIMEOUT, what="the three stored messages consumed")
    read = requests.get(stack.url, timeout=TIMEOUT)
    assert read.status_code == 200 and len(read.json()["logging"]) == 3
    assert_every_health_is_200(stack)
    health = requests.get(f"{stack.logging[0].url}/health", timeout=TIMEOUT).json()
    assert health["details"]["log"]["capacity_bytes"] == capacity


def _assert_consumed(stack, count: int) -> None:
    consumed = requests.get(f"{stack.messages[0].url}/messages", timeout=TIMEOUT).json()["messages"]
    assert len(consumed) == count


def test_a_full_queue_refuses_posts_with_503_and_retry_after_and_logs_nothing(own_stack, hz_client):
    # No consumer: the queue fills up as when the consumers fall behind.
    stack = own_stack(logging=1, messages=0)
    shared = names(stack)
    queue = hz_client.get_queue(shared.queue_name).blocking()
    log = hz_client.get_map(shared.map_name).blocking()
    bound = queue_max_size()
    for start in range(0, bound, 1000):
        queue.add_all([queue_item.encode(str(uuid.uuid4()), "waiting") for _ in range(min(1000, bound - start))])
    assert queue.remaining_capacity() == 0

    answer = requests.post(stack.url, json={"msg": "one too many"}, timeout=TIMEOUT)

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "1"
    assert answer.json() == {"error": "the message queue is full", "logged": False, "queued": False}
    assert log.size() == 0 and queue.size() == bound
    assert_every_health_is_200(stack)
    queue.clear()
    assert requests.post(stack.url, json={"msg": "room again"}, timeout=TIMEOUT).status_code == 201


FLOOD_CLIENTS = 16
FLOOD_CHARS = 4000
FLOOD_HEAP = "128m"
# About 1,870 messages of 4,000 characters: the flood passes it within seconds, and the whole log still
# reads back in one GET /facade well inside the facade's read timeout.
FLOOD_CAPACITY = 8 * 1024 * 1024


def test_a_flood_past_the_capacity_of_a_small_cluster_acknowledges_only_what_it_keeps(log_dir):
    # The capacity is within what the rule gives such a cluster: the test exercises the default's safety.
    assert default_log_capacity_bytes(java_size_bytes(FLOOD_HEAP), members=3) >= FLOOD_CAPACITY
    env = {"LOG_CAPACITY_BYTES": str(FLOOD_CAPACITY)}
    with running_stack(log_dir, logging=3, messages=2, heap=FLOOD_HEAP, env=env) as stack:
        filler = "f" * (FLOOD_CHARS - 8)
        flood = Load(
            # Each message its own, so the walk of the pages can tell them apart.
            lambda s, n: s.post(stack.url, json={"msg": f"{n:08d}{filler}"}, timeout=TIMEOUT),
            clients=FLOOD_CLIENTS,
            max_requests=4000,
            max_seconds=45,
            pause=0,
        )
        reads = Load(lambda s, n: s.get(stack.url, timeout=TIMEOUT), clients=1, max_seconds=45, pause=0.5)
        with flood, reads:
            # Until well past the capacity: a few hundred refusals, then stop.
            eventually(lambda: _assert_refused(flood, 300), 45, interval=0.5, what="300 refusals once the log is full")
        outcomes = flood.snapshot()
        kinds = {o.kind for o in outcomes}
        assert kinds <= {"201", "507", "503"}, f"answers other than 201 or a documented refusal: {kinds}"
        refusals = [o for o in outcomes if o.kind in ("503", "507")]
        assert all(set(o.body or {}) >= {"error"} for o in refusals)
        acknowledged = {o.body["id"] for o in outcomes if o.kind == "201" and o.body}
        acknowledged_msgs = {o.body["msg"] for o in outcomes if o.kind == "201" and o.body}

        for proc in stack.cluster.members.values():
            assert proc.alive(), f"{proc.name} died:\n{proc.tail()}"
        shared = names(stack)
        client = hazelcast.HazelcastClient(
            cluster_name=shared.cluster_name, cluster_members=stack.cluster.addresses, cluster_connect_timeout=30
        )
        try:
            assert len(client.cluster_service.get_members()) == 3
            stored = set(client.get_map(shared.map_name).blocking().key_set())
        finally:
            client.shutdown()
        lost = acknowledged - stored
        assert not lost, f"{len(lost)} acknowledged messages are not in the log"
        # Held: past the capacity by no more than the logging workers' size caches let through.
        cost = entry_cost(str(uuid.uuid4()), encode(f"{0:08d}{filler}", time.time_ns()))
        assert len(stored) * cost <= FLOOD_CAPACITY * 1.25, f"{len(stored)} stored"
        read_kinds = {o.kind for o in reads.snapshot()}
        assert read_kinds == {"200"}, f"GET /facade during the flood: {read_kinds}"
        walked, slowest_page = walk_the_log(stack.url)
        assert len(walked) == len(stored) and acknowledged_msgs <= set(walked), "the pages hold every acknowledged"
        stack.wait_all_passing(timeout=30)
        assert_every_health_is_200(stack)
        record(
            log_dir,
            "flood",
            {
                "acknowledged": len(acknowledged),
                "refused": len(refusals),
                "refused_log_full": sum(o.kind == "507" for o in refusals),
                "lost": len(lost),
                "stored_of_capacity": round(len(stored) * cost / FLOOD_CAPACITY, 3),
                "slowest_read_s": round(max(o.seconds for o in [*reads.snapshot()]), 3),
                "slowest_page_s": round(slowest_page, 3),
                "slowest_post_s": round(max(o.seconds for o in outcomes), 3),
            },
        )


def walk_the_log(url: str) -> tuple[list[str], float]:
    """The whole log through GET /facade, page by page (the default limit), and the slowest page's time."""
    walked: list[str] = []
    slowest = 0.0
    params: dict[str, str] = {}
    for _ in range(1000):
        started = time.monotonic()
        page = requests.get(url, params=params, timeout=TIMEOUT)
        slowest = max(slowest, time.monotonic() - started)
        assert page.status_code == 200, page.text[:200]
        walked += page.json()["logging"]
        if page.json()["next"] is None:
            return walked, slowest
        params = {"after": page.json()["next"]}
    raise AssertionError("the log still had pages after 1,000")


def _assert_refused(load: Load, count: int) -> None:
    refused = sum(o.kind in ("503", "507") for o in load.snapshot())
    assert refused >= count, f"{refused} refusals"
