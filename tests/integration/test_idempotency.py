"""POST /facade with an Idempotency-Key: a retry returns the first answer and the log holds the message
once, also when the facade lost its Hazelcast connection after the log write; a key never makes the log,
the queue and the answer disagree. Real processes (facade/idempotency.py's every path is in
tests/unit/test_idempotency_key.py)."""

from __future__ import annotations

import uuid

import pytest
import requests

from contracts import queue_item
from devstack import ConsulAgent, HazelcastCluster, eventually, start_service, wait_passing
from servicekit import kvconfig
from servicekit.registration import service_definition
from servicekit.settings import Settings

TIMEOUT = 10


def post(url: str, msg: str, key: str) -> requests.Response:
    return requests.post(url, json={"msg": msg}, headers={"Idempotency-Key": key}, timeout=TIMEOUT)


def copies_in_log(hz_client, stack, msg: str) -> int:
    log = hz_client.get_map(kvconfig.load(stack.agent.client()).map_name).blocking()
    return sum(entry.endswith(msg) for entry in log.values())


def queue_of(hz_client, stack):
    return hz_client.get_queue(kvconfig.load(stack.agent.client()).queue_name).blocking()


def copies_queued(hz_client, stack, msg: str) -> int:
    return sum(queue_item.decode_item(item).msg == msg for item in queue_of(hz_client, stack).iterator())


def records(hz_client, stack):
    """The facade's idempotency map (facade.idempotency.answers_map_name)."""
    return hz_client.get_map(f"{kvconfig.load(stack.agent.client()).map_name}.idempotency").blocking()


@pytest.fixture(scope="module")
def unconsumed(module_stack):
    """A stack of the module's own without a messages instance: what is queued stays there to be counted."""
    return module_stack(logging=2, messages=0)


@pytest.fixture
def cut_facade(stack, log_dir):
    """A facade on a Consul agent and a one-member Hazelcast cluster of its own, whose logging instances
    are the shared stack's (registered with its agent too): stopping its member cuts its queue off while
    the log stays reachable."""
    agent = ConsulAgent(log_dir, name="consul-cut-facade").start()
    cluster = facade = None
    try:
        cluster = HazelcastCluster(agent, log_dir, size=1).start()
        for service in stack.logging:
            agent.client().agent.service.register(**service_definition(Settings(service.name, service.port)))
        facade = wait_passing(agent, start_service("facade-service", agent, log_dir))
        yield facade, cluster
    finally:
        if facade is not None:
            facade.stop()
        if cluster is not None:
            cluster.stop()
        agent.stop()


def test_a_retry_after_a_failed_queue_offer_logs_the_message_once(cut_facade, stack, hz_client):
    facade, cluster = cut_facade
    cluster.stop()

    def cut_off():
        answer = requests.get(f"{facade.url}/health", timeout=TIMEOUT)
        assert answer.json()["checks"]["hazelcast"] is False, answer.text

    eventually(cut_off, timeout=15, what="the facade sees its cluster gone")
    msg, key = f"once-{uuid.uuid4()}", str(uuid.uuid4())
    first = post(f"{facade.url}/facade", msg, key)
    assert first.status_code == 503, first.text
    assert first.json()["logged"] is True and first.json()["queued"] is False, first.text
    retried = post(f"{facade.url}/facade", msg, key)
    assert retried.status_code == 503, retried.text
    assert retried.json()["id"] == first.json()["id"]
    assert copies_in_log(hz_client, stack, msg) == 1


def test_the_same_key_gets_the_first_answer_and_stores_nothing_new(stack, hz_client):
    msg, key = f"once-{uuid.uuid4()}", str(uuid.uuid4())
    first = post(stack.url, msg, key)
    assert first.status_code == 201, first.text
    again = post(stack.url, msg, f'"{key}"')  # the draft's structured-field form names the same key
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert copies_in_log(hz_client, stack, msg) == 1
    other = post(stack.url, f"{msg} but different", key)
    assert other.status_code == 422, other.text
    assert "another message" in other.json()["error"]
    assert copies_in_log(hz_client, stack, f"{msg} but different") == 0


def test_a_malformed_key_is_a_400_and_stores_nothing(stack, hz_client):
    msg = f"never-{uuid.uuid4()}"
    for key in ("two words", "k" * 256, '"'):
        answer = post(stack.url, msg, key)
        assert answer.status_code == 400, answer.text
    assert copies_in_log(hz_client, stack, msg) == 0


def test_after_a_refusal_the_key_keeps_its_message_another_is_422_and_a_retry_finishes(unconsumed, hz_client):
    stack = unconsumed
    queue = queue_of(hz_client, stack)
    while queue.remaining_capacity() > 0:
        queue.add_all(
            [queue_item.encode(str(uuid.uuid4()), "waiting") for _ in range(min(1000, queue.remaining_capacity()))]
        )
    tag, key = uuid.uuid4(), str(uuid.uuid4())
    try:
        refused = post(stack.url, f"pay 10 {tag}", key)
        assert refused.status_code == 503 and refused.json()["queued"] is False, refused.text
        other = post(stack.url, f"pay 9999 {tag}", key)
        assert other.status_code == 422, other.text
        assert "another message" in other.json()["error"]
    finally:
        queue.clear()
    retried = post(stack.url, f"pay 10 {tag}", key)
    assert retried.status_code == 201, retried.text
    assert (
        copies_in_log(hz_client, stack, f"pay 10 {tag}") == 1
        and copies_in_log(hz_client, stack, f"pay 9999 {tag}") == 0
    )
    assert copies_queued(hz_client, stack, f"pay 10 {tag}") == 1
    # Kept for the window from the answer: Hazelcast's replace drops an entry's TTL, set_ttl puts it back.
    ttl_ms = records(hz_client, stack).get_entry_view(key).ttl
    assert 0 < ttl_ms <= 3600 * 1000, ttl_ms


def test_a_key_reused_with_another_message_after_its_window_is_422_and_the_log_and_queue_keep_the_first(
    unconsumed, hz_client
):
    stack = unconsumed
    tag, key = uuid.uuid4(), str(uuid.uuid4())
    first, other = f"pay 10 {tag}", f"pay 9999 {tag}"
    assert post(stack.url, first, key).status_code == 201
    # The window passes: the record goes, as its TTL would make it go.
    records(hz_client, stack).remove(key)
    reused = post(stack.url, other, key)
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"] == (
        "this Idempotency-Key came with another message: the log holds a different one under its id"
    )
    assert copies_in_log(hz_client, stack, first) == 1 and copies_in_log(hz_client, stack, other) == 0
    assert copies_queued(hz_client, stack, first) == 1 and copies_queued(hz_client, stack, other) == 0
    # The first message's own retry cannot know whether it was queued: it says so before it queues again.
    unknown = post(stack.url, first, key)
    assert unknown.status_code == 503, unknown.text
    assert unknown.json()["logged"] is True and unknown.json()["queued"] is None, unknown.text
    assert copies_queued(hz_client, stack, first) == 1
    assert post(stack.url, first, key).status_code == 201
    assert copies_queued(hz_client, stack, first) == 2
    assert copies_in_log(hz_client, stack, first) == 1


def test_with_its_map_out_of_reach_a_key_reused_with_another_message_is_422_from_the_log(cut_facade, stack, hz_client):
    facade, cluster = cut_facade
    cluster.stop()

    def cut_off():
        answer = requests.get(f"{facade.url}/health", timeout=TIMEOUT)
        assert answer.json()["checks"]["hazelcast"] is False, answer.text

    eventually(cut_off, timeout=15, what="the facade sees its cluster gone")
    tag, key = uuid.uuid4(), str(uuid.uuid4())
    first = post(f"{facade.url}/facade", f"pay 10 {tag}", key)
    assert first.status_code == 503 and first.json()["logged"] is True, first.text
    other = post(f"{facade.url}/facade", f"pay 9999 {tag}", key)
    assert other.status_code == 422, other.text
    assert "the log holds a different one" in other.json()["error"]
    assert copies_in_log(hz_client, stack, f"pay 10 {tag}") == 1
    assert copies_in_log(hz_client, stack, f"pay 9999 {tag}") == 0
