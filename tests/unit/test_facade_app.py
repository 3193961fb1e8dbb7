"""The facade rejects bad input before it calls any other service."""

import pytest

from facade import create_app
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
    response = client.post("/facade", data=data)
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
