"""The facade rejects bad input before it calls any other service."""

import threading

import pytest

from devstack import eventually
from facade import create_app
from facade.backends import Backends
from facade.settings import FacadeSettings
from servicekit.lifecycle import close_app


class DisconnectedHazelcast:
    connected = False

    def shared_config(self):
        raise AssertionError("bad input must not reach the queue")

    def get_queue(self, name: str, timeout: float | None = None):
        raise AssertionError("bad input must not reach the queue")


# Consul at a port nothing listens on: any call to discovery would fail the request with a 503.
UNREACHABLE_CONSUL = FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1"})


@pytest.fixture
def client(closing):
    return closing(create_app(UNREACHABLE_CONSUL, hz=DisconnectedHazelcast())).test_client()


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
    backends = Backends(FacadeSettings.from_env("facade-service", 8080, env={}), NoDiscovery())
    # Each read waits for the other: read one after the other, they would break the barrier.
    both_running = threading.Barrier(2, timeout=5)

    def logged(limit, after):
        both_running.wait()
        return ["logged"], None

    def consumed(limit, after):
        both_running.wait()
        return "messages-service-1", ["consumed"], None

    backends.logged_messages = logged
    backends.consumed_messages = consumed
    try:
        assert backends.read_page(10, None, None) == {
            "logging": ["logged"],
            "messages": ["consumed"],
            "messages_from": "messages-service-1",
            "next": None,
            "messages_next": None,
        }
    finally:
        backends.close()


def test_a_closed_facade_app_leaves_no_thread_running():
    before = set(threading.enumerate())
    app = create_app(UNREACHABLE_CONSUL, hz=DisconnectedHazelcast())
    # GET /facade also starts the executor that reads messages_svc beside logging_svc.
    assert app.test_client().get("/facade").status_code == 503
    started = {t.name for t in set(threading.enumerate()) - before}
    assert {"watch-logging-service", "watch-messages-service"} <= started
    close_app(app)

    def nothing_left():
        assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []

    eventually(nothing_left, timeout=3, what="the app's threads end once it is closed")


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "after=x", "messages_after=x", "messages_after=1.a b"])
def test_a_bad_limit_or_cursor_is_a_400_before_any_backend_call(client, query):
    response = client.get(f"/facade?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json["error"]
