"""What a web page open in the user's browser cannot do to any service (servicekit/web.py):

- write with a "simple" request: a POST whose Content-Type is not application/json is refused (415), so
  a page has to ask for a CORS preflight first, which no service answers;
- read through DNS rebinding: a request whose Host is not one of the configured names is refused (421),
  so a page on attacker.example whose name now points at 127.0.0.1 gets nothing.
"""

from __future__ import annotations

import uuid

import pytest

import bench.reference
import facade
import logging_svc
import messages_svc
from facade.settings import FacadeSettings
from logging_svc.settings import LoggingSettings
from messages_svc.settings import MessagesSettings
from servicekit.kvconfig import SharedConfig
from servicekit.settings import Settings, SettingsError


class MemoryLog:
    ready = True

    def __init__(self):
        self.entries: dict[str, str] = {}

    def add(self, message_id, msg):
        if message_id in self.entries:
            return False
        self.entries[message_id] = msg
        return True

    def messages(self):
        return list(self.entries.values())

    def status(self):
        return {"entries": len(self.entries)}


class RecordingHazelcast:
    connected = True

    def __init__(self):
        self.offered: list[str] = []

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_queue(self, name: str, timeout: float | None = None):
        return self

    def offer(self, item: str) -> bool:
        self.offered.append(item)
        return True


def settings_for(service: str, port: int, **env: str) -> Settings:
    # Consul at a port nothing listens on: the facade's discovery never finds an instance.
    own = {"facade-service": FacadeSettings, "logging-service": LoggingSettings, "messages-service": MessagesSettings}
    kind = own.get(service, Settings)
    return kind.from_env(service, port, env={"CONSUL_HTTP_ADDR": "127.0.0.1:1", **env})


def logging_client(**env: str):
    log = MemoryLog()
    app = logging_svc.create_app(settings_for("logging-service", 8081, **env), message_log=log)
    return app.test_client(), log


def facade_client(closing, **env: str):
    hz = RecordingHazelcast()
    return closing(facade.create_app(settings_for("facade-service", 8080, **env), hz=hz)).test_client(), hz


def message_body() -> bytes:
    return b'{"id": "%s", "msg": "from a web page"}' % str(uuid.uuid4()).encode()


NOT_JSON = [
    None,
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "application/json; charset=iso-8859-1",
]


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_logging_post_that_is_not_declared_json_is_415_and_stores_nothing(content_type):
    client, log = logging_client()
    response = client.post("/logging", data=message_body(), content_type=content_type)
    assert response.status_code == 415
    assert set(response.json) == {"error"} and "application/json" in response.json["error"]
    assert log.entries == {}


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_facade_post_that_is_not_declared_json_is_415_and_queues_nothing(content_type, closing):
    client, hz = facade_client(closing)
    response = client.post("/facade", data=b'{"msg": "from a web page"}', content_type=content_type)
    assert response.status_code == 415
    assert set(response.json) == {"error"}
    assert hz.offered == []


@pytest.mark.parametrize("path", ["/echo", "/chain"])
def test_the_benchmark_references_refuse_what_the_facade_refuses(path):
    client = bench.reference.create_app(settings_for("reference", 8090)).test_client()
    response = client.post(path, data=b'{"msg": "hi"}', content_type="text/plain")
    assert response.status_code == 415


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON; Charset=UTF-8"]
)
def test_json_with_or_without_a_utf8_charset_is_taken(content_type):
    client, log = logging_client()
    response = client.post("/logging", data=message_body(), content_type=content_type)
    assert response.status_code == 201, response.json
    assert log.messages() == ["from a web page"]


FOREIGN_HOSTS = [
    "attacker.example",
    "attacker.example:8081",
    "127.0.0.1.attacker.example",
    "localhost.attacker.example:8081",
    "attacker@127.0.0.1",
    # Two Host headers arrive joined by a comma.
    "localhost,attacker.example",
    "[::2]:8081",
    "",
]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
@pytest.mark.parametrize(("method", "path"), [("GET", "/logging"), ("GET", "/health"), ("GET", "/nowhere")])
def test_a_foreign_host_name_reads_nothing(host, method, path):
    client, log = logging_client()
    log.add(str(uuid.uuid4()), "private")
    response = client.open(path, method=method, headers={"Host": host})
    assert response.status_code == 421
    assert set(response.json) == {"error"}
    assert "private" not in response.text


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_a_foreign_host_name_writes_nothing(host):
    client, log = logging_client()
    response = client.post("/logging", data=message_body(), content_type="application/json", headers={"Host": host})
    assert response.status_code == 421
    assert log.entries == {}


def test_a_foreign_host_name_is_refused_by_every_service(closing):
    clients = [
        facade_client(closing)[0],
        logging_client()[0],
        messages_svc.create_app(settings_for("messages-service", 8084), consume=False).test_client(),
    ]
    for client in clients:
        assert client.get("/health", headers={"Host": "attacker.example:8080"}).status_code == 421
    assert clients[0].get("/facade", headers={"Host": "attacker.example:8080"}).status_code == 421
    assert clients[2].get("/messages", headers={"Host": "attacker.example:8084"}).status_code == 421


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8081", "LocalHost:1", "localhost.", "127.0.0.1", "127.0.0.1:65535", "[::1]", "[::1]:8081"],
)
def test_loopback_names_are_accepted_on_any_port_by_default(host):
    client, _ = logging_client()
    assert client.get("/health", headers={"Host": host}).status_code == 200


def test_the_bind_address_is_accepted_so_consul_checks_and_other_hosts_reach_the_instance():
    client, _ = logging_client(SERVICE_HOST="10.1.2.3")
    assert client.get("/health", headers={"Host": "10.1.2.3:8081"}).status_code == 200
    assert client.get("/health", headers={"Host": "10.1.2.4:8081"}).status_code == 421


def test_allowed_hosts_replaces_the_loopback_names_and_the_bind_address_stays():
    client, _ = logging_client(ALLOWED_HOSTS=" logs.internal , [fd00::1]", SERVICE_HOST="10.1.2.3")
    for host in ("logs.internal", "LOGS.internal:8081", "[fd00::1]:8081", "[fd00:0::1]", "10.1.2.3:8081"):
        assert client.get("/health", headers={"Host": host}).status_code == 200, host
    for host in ("localhost:8081", "127.0.0.1:8081", "internal", "logs.internal.attacker.example"):
        assert client.get("/health", headers={"Host": host}).status_code == 421, host


def test_allowed_hosts_default_to_the_loopback_names():
    settings = Settings.from_env("logging-service", 8081, env={})
    assert settings.allowed_hosts == ("localhost", "127.0.0.1", "::1")


@pytest.mark.parametrize("value", ["localhost:8080", "http://localhost", "a b", " , ", "*", "[::1", "fd00::g"])
def test_allowed_hosts_takes_bare_names_only(value):
    with pytest.raises(SettingsError, match="ALLOWED_HOSTS"):
        Settings.from_env("logging-service", 8081, env={"ALLOWED_HOSTS": value})


def test_a_service_host_that_is_no_host_name_is_a_settings_error():
    with pytest.raises(SettingsError, match="SERVICE_HOST"):
        Settings.from_env("logging-service", 8081, env={"SERVICE_HOST": "http://10.0.0.1"})
