"""The whole system with real processes: Consul registration, discovery, the map and the queue."""

from __future__ import annotations

import collections
import signal
import uuid

import pytest
import requests

from devstack import check_status, eventually, isolated_agent, read_all, wait_passing
from servicekit import kvconfig

TIMEOUT = 10


def post(stack, msg: str) -> dict:
    response = requests.post(stack.url, json={"msg": msg}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()


def consumed_by(stack) -> dict[str, list[str]]:
    """What each messages instance holds, asked directly."""
    return {s.instance_id: read_all(f"{s.url}/messages", "messages") for s in stack.messages}


def test_every_instance_is_registered_once_with_a_passing_check(stack):
    client = stack.agent.client()
    expected = {
        "logging-service": {s.instance_id for s in stack.logging},
        "messages-service": {s.instance_id for s in stack.messages},
        "facade-service": {stack.facade.instance_id},
    }
    for name, ids in expected.items():
        _, entries = client.health.service(name)
        registered = [e["Service"]["ID"] for e in entries]
        assert sorted(registered) == sorted(ids), name
        for entry in entries:
            assert entry["Service"]["Meta"]["version"]
            checks = [c for c in entry["Checks"] if c["ServiceID"]]
            assert len(checks) == 1 and checks[0]["Status"] == "passing", checks
            assert checks[0]["Type"] == "http"
    _, members = client.health.service("hazelcast", passing=True)
    assert len(members) == 3


def test_post_then_get_returns_the_message_in_both_lists(stack):
    text = f"hello {uuid.uuid4()}"
    body = post(stack, text)
    assert body["msg"] == text
    assert uuid.UUID(body["id"]).version == 4

    def visible():
        answer = requests.get(stack.url, timeout=TIMEOUT).json()
        assert set(answer) >= {"logging", "messages"}
        assert all(isinstance(m, str) for m in answer["logging"] + answer["messages"])
        assert text in answer["logging"]
        return answer

    eventually(visible)

    def consumed_once():
        assert sum(text in held for held in consumed_by(stack).values()) == 1

    eventually(consumed_once)


def test_each_message_is_logged_once_in_order_and_consumed_by_exactly_one_instance(stack):
    texts = [f"order-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    for text in texts:
        post(stack, text)

    logged = read_all(stack.url, "logging")
    ours = [m for m in logged if m in set(texts)]
    assert ours == texts, "logged once each, in the order the facade accepted them"

    def all_consumed_once():
        held = consumed_by(stack)
        counts = collections.Counter(m for msgs in held.values() for m in msgs if m in set(texts))
        assert set(counts) == set(texts), f"{len(set(texts) - set(counts))} not consumed yet"
        assert set(counts.values()) == {1}, "a message was consumed twice"
        return held

    held = eventually(all_consumed_once)
    # Competing consumers: with 40 messages both instances take some.
    assert all(any(m in set(texts) for m in msgs) for msgs in held.values()), held


def test_random_choice_reaches_every_logging_and_messages_instance(stack):
    logged_by = collections.Counter(post(stack, f"spread-{i}")["logged_by"] for i in range(30))
    assert set(logged_by) == {s.instance_id for s in stack.logging}, logged_by

    answered_by = collections.Counter(
        requests.get(stack.url, timeout=TIMEOUT).json()["messages_from"] for _ in range(20)
    )
    assert set(answered_by) == {s.instance_id for s in stack.messages}, answered_by


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b'{"msg": "\xff\xfe"}', 400),
        (b'["a list"]', 400),
        (b"{}", 400),
        (b'{"msg": 42}', 400),
        (b'{"msg": null}', 400),
        (b'{"msg": "' + b"x" * (64 * 1024) + b'"}', 413),
    ],
    ids=["not-json", "bad-utf8", "not-object", "missing-msg", "msg-not-string", "msg-null", "too-large"],
)
def test_bad_input_is_rejected_with_a_json_error_and_stores_nothing(stack, body, status):
    before = len(read_all(stack.url, "logging"))
    response = requests.post(stack.url, data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert isinstance(response.json()["error"], str)
    assert len(read_all(stack.url, "logging")) == before


def test_unknown_route_and_wrong_method_are_json_errors(stack):
    missing = requests.get(f"{stack.facade.url}/nope", timeout=TIMEOUT)
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = requests.delete(stack.url, timeout=TIMEOUT)
    assert wrong.status_code == 405 and "error" in wrong.json()


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"id": "not-a-uuid", "msg": "x"}', b'{"id": 1, "msg": "x"}', b'{"msg": "x"}', b'{"id": "%s"}'],
    ids=["not-json", "id-not-uuid", "id-not-string", "missing-id", "missing-msg"],
)
def test_logging_service_rejects_bad_input(stack, body):
    body = body.replace(b"%s", str(uuid.uuid4()).encode())
    response = requests.post(
        f"{stack.logging[0].url}/logging", data=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert "error" in response.json()


def test_logging_is_idempotent_by_id(stack):
    message_id = str(uuid.uuid4())
    text = f"idempotent-{message_id}"
    first, second = stack.logging[0], stack.logging[1]
    created = requests.post(f"{first.url}/logging", json={"id": message_id, "msg": text}, timeout=TIMEOUT)
    replayed = requests.post(f"{second.url}/logging", json={"id": message_id, "msg": text}, timeout=TIMEOUT)
    assert (created.status_code, replayed.status_code) == (201, 200)
    logged = read_all(f"{stack.logging[2].url}/logging", "messages")
    assert logged.count(text) == 1


def test_health_reports_connected_dependencies(stack):
    for service in stack.instances:
        response = requests.get(f"{service.url}/health", timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.json()["checks"]["hazelcast"] is True


def test_a_killed_instance_turns_critical_in_consul(stack, start_instance):
    extra = wait_passing(stack.agent, start_instance("logging-service"))
    extra.proc.kill9()
    client = stack.agent.client()

    def critical():
        assert check_status(client, extra.instance_id) == "critical"

    eventually(critical, timeout=10)


def test_sigterm_leaves_consul_first_then_drains_then_stops(stack, start_instance):
    extra = wait_passing(stack.agent, start_instance("messages-service"))
    client = stack.agent.client()
    extra.proc.send_signal(signal.SIGTERM)

    def deregistered():
        assert check_status(client, extra.instance_id) is None

    eventually(deregistered, timeout=5, interval=0.02)
    # Out of Consul, but still serving while callers drop it (DRAIN_SECONDS, 1 s by default).
    assert requests.get(f"{extra.url}/health", timeout=TIMEOUT).status_code == 200
    extra.proc.popen.wait(20)
    assert extra.proc.popen.returncode == 0


def test_post_without_a_healthy_logging_instance_is_503_and_queues_nothing(
    hazelcast_cluster, hz_client, log_dir, start_instance
):
    # A Consul of its own, where no logging-service is registered, on the same Hazelcast cluster
    # but with a queue nobody consumes, so the test can see that nothing reached it.
    agent = isolated_agent(hazelcast_cluster, log_dir, name="consul-empty")
    try:
        queue_name = agent.client().kv.get(kvconfig.KEY_QUEUE)[1]["Value"].decode()
        facade = wait_passing(agent, start_instance("facade-service", agent=agent))
        response = requests.post(f"{facade.url}/facade", json={"msg": "nowhere"}, timeout=TIMEOUT)
        assert response.status_code == 503
        assert "logging-service" in response.json()["error"]
        assert hz_client.get_queue(queue_name).blocking().size() == 0
    finally:
        agent.stop()
