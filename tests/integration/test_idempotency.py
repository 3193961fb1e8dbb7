"""POST /facade with an Idempotency-Key: a retry returns the first answer and the log holds the message
once, also when the facade lost its Hazelcast connection after the log write. Real processes."""

from __future__ import annotations

import uuid

import pytest
import requests

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
            facade.proc.stop()
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
