"""The facade rejects bad input before it calls any other service."""

import threading

import pytest

from facade import create_app
from facade.backends import Backends
from servicekit.settings import Settings


class DisconnectedHazelcast:
    connected = False

    def queue(self):
        raise AssertionError("bad input must not reach the queue")


@pytest.fixture
def client():
    # Consul at a port nothing listens on: any call to discovery would fail the request with a 503.
    settings = Settings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})
    return create_app(settings, hz=DisconnectedHazelcast()).test_client()


@pytest.mark.parametrize(
    "data", [b"", b"nope", b'"just a string"', b"{}", b'{"msg": ["x"]}', b'{"msg": ""}', b'{"msg": "\xc3\x28"}']
)
def test_bad_input_is_400_before_any_backend_call(client, data):
    response = client.post("/facade", data=data, content_type="application/json")
    assert response.status_code == 400
    assert set(response.json) == {"error"}


def test_unreachable_consul_is_a_503_with_a_clear_error(client):
    response = client.post("/facade", json={"msg": "hello"})
    assert response.status_code == 503
    assert "logging-service" in response.json["error"]


def test_health_is_503_until_hazelcast_connects(client):
    assert client.get("/health").status_code == 503


def test_errors_are_json(client):
    assert client.get("/missing").json["error"]
    assert client.put("/facade").status_code == 405


def test_get_with_unreachable_consul_is_a_503_with_a_clear_error(client):
    response = client.get("/facade")
    assert response.status_code == 503
    assert "logging-service" in response.json["error"]


class NoDiscovery:
    def close(self):
        pass


def test_get_reads_logging_and_messages_at_the_same_time():
    backends = Backends(Settings.from_env("facade-service", 8080, env={}), NoDiscovery())
    # Each read waits for the other: read one after the other, they would break the barrier.
    both_running = threading.Barrier(2, timeout=5)

    def logged():
        both_running.wait()
        return ["logged"]

    def consumed():
        both_running.wait()
        return "messages-service-1", ["consumed"]

    backends.logged_messages = logged
    backends.consumed_messages = consumed
    try:
        assert backends.read_all() == (["logged"], "messages-service-1", ["consumed"])
    finally:
        backends.close()
