import socket
import time
import uuid

import pytest

from facade.settings import FacadeSettings
from logging_svc.settings import LoggingSettings, default_log_capacity_bytes, java_size_bytes
from logging_svc.store import encode, entry_cost
from servicekit.settings import (
    ConsulAddress,
    ConsulSettings,
    Settings,
    SettingsError,
)


def test_defaults_follow_consul_conventions():
    settings = Settings.from_env("logging-service", 8081, env={})
    assert settings.bind == "127.0.0.1:8081"
    assert settings.consul.url == "http://127.0.0.1:8500"
    assert settings.consul.token is None
    assert settings.consul.timeout == 2.0
    assert settings.max_body_bytes == 64 * 1024
    assert settings.instance_id.startswith("logging-service-") and settings.instance_id.endswith("-8081")


def test_environment_overrides():
    settings = Settings.from_env(
        "facade-service",
        8080,
        env={"PORT": "9000", "CONSUL_HTTP_ADDR": "https://consul.local:8501", "CONSUL_HTTP_TOKEN": "secret"},
    )
    assert settings.port == 9000
    assert settings.consul.address == ConsulAddress("https", "consul.local", 8501)
    assert settings.consul.token == "secret"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"CONSUL_HTTP_ADDR": "ftp://x:1"}, "CONSUL_HTTP_ADDR"),
        ({"CONSUL_HTTP_ADDR": "host:notaport"}, "CONSUL_HTTP_ADDR"),
        ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES"),
        ({"HTTP_READ_TIMEOUT": "soon"}, "HTTP_READ_TIMEOUT"),
    ],
)
def test_a_bad_value_names_its_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        FacadeSettings.from_env("facade-service", 8080, env=env)


def test_consul_address_without_port_uses_8500():
    assert ConsulAddress.parse("127.0.0.2") == ConsulAddress("http", "127.0.0.2", 8500)


def test_a_tool_reaches_consul_without_a_service_name_or_port():
    consul = ConsulSettings.from_env(
        {"CONSUL_HTTP_ADDR": "127.0.0.3:8600", "CONSUL_HTTP_TOKEN": "secret", "CONSUL_TIMEOUT": "0.5"}
    )
    assert consul.address == ConsulAddress("http", "127.0.0.3", 8600)
    assert (consul.url, consul.token, consul.timeout) == ("http://127.0.0.3:8600", "secret", 0.5)
    assert "secret" not in repr(consul)
    assert FacadeSettings.from_env("facade-service", 8080, env={"CONSUL_HTTP_ADDR": "127.0.0.3:8600"}).consul == (
        ConsulSettings.from_env({"CONSUL_HTTP_ADDR": "127.0.0.3:8600"})
    )


def test_a_bad_consul_timeout_names_its_variable():
    with pytest.raises(SettingsError, match="CONSUL_TIMEOUT"):
        ConsulSettings.from_env({"CONSUL_TIMEOUT": "never"})


def test_an_instance_id_is_service_host_port_for_services_and_hazelcast_members_alike():
    from servicekit.settings import instance_id

    assert instance_id("hazelcast", 5701, host="box") == "hazelcast-box-5701"
    assert Settings.from_env("logging-service", 8081, env={}).instance_id == instance_id("logging-service", 8081)


def test_instance_host_names_the_simulated_host_in_the_instance_id(monkeypatch):
    from servicekit.settings import instance_id

    # Every network namespace of ./scripts/hosts shares the machine's hostname: INSTANCE_HOST tells them apart.
    settings = Settings.from_env("logging-service", 8081, env={"INSTANCE_HOST": "app2"})
    assert settings.instance_id == "logging-service-app2-8081"
    monkeypatch.setenv("INSTANCE_HOST", "app3")
    assert instance_id("hazelcast", 5701) == "hazelcast-app3-5701"
    monkeypatch.delenv("INSTANCE_HOST")
    assert instance_id("hazelcast", 5701) == f"hazelcast-{socket.gethostname()}-5701"
    assert Settings.from_env("logging-service", 8081, env={"INSTANCE_HOST": ""}).instance_id == (
        f"logging-service-{socket.gethostname()}-8081"
    )


@pytest.mark.parametrize("raw", ["app 1", "app1.example", "-app1", "app1-", "a" * 64, "app/1", "äpp1"])
def test_an_instance_host_that_is_not_a_dns_label_is_refused(raw):
    with pytest.raises(SettingsError, match="INSTANCE_HOST"):
        Settings.from_env("logging-service", 8081, env={"INSTANCE_HOST": raw})


def test_the_default_log_capacity_is_half_the_heap_of_all_members_but_one_over_two_copies():
    assert java_size_bytes("1g") == 1024**3 and java_size_bytes("512m") == 512 * 1024**2
    assert default_log_capacity_bytes(1024**3, members=3) == 512 * 1024**2
    # The default stack (conf/stack.env) holds at least 1,000,000 messages of 100 characters.
    assert LoggingSettings.from_env("logging-service", 8081, env={}).log_capacity_bytes >= 1_000_000 * entry_cost(
        str(uuid.uuid4()), encode("x" * 100, time.time_ns())
    )
    assert (
        LoggingSettings.from_env("logging-service", 8081, env={"LOG_CAPACITY_BYTES": "5000"}).log_capacity_bytes == 5000
    )
    # A stack shrunk to two members (scripts/lib.sh) holds half: one member's heap is left for the copies.
    shrunk = LoggingSettings.from_env("logging-service", 8081, env={"HAZELCAST_INSTANCES": "2"})
    assert shrunk.log_capacity_bytes == 256 * 1024**2


@pytest.mark.parametrize("raw", ["1.5g", "g", "12t", ""])
def test_a_heap_that_java_would_not_take_is_refused(raw):
    with pytest.raises(SettingsError, match="HAZELCAST_HEAP"):
        java_size_bytes(raw)


def test_settings_made_directly_take_instance_host_from_the_environment_like_instance_id(monkeypatch):
    from servicekit.settings import instance_id

    monkeypatch.setenv("INSTANCE_HOST", "box7")
    made = Settings(service_name="logging-service", port=8081)
    assert made.instance_id == instance_id("logging-service", 8081) == "logging-service-box7-8081"


def test_log_format_accepts_exactly_the_formats_servicekit_logs_writes():
    from servicekit import logs

    for name in logs.LOG_FORMATS:
        assert FacadeSettings.from_env("facade-service", 8080, env={"LOG_FORMAT": name}).log_format == name
    with pytest.raises(SettingsError, match="LOG_FORMAT must be one of text, json, got 'xml'"):
        FacadeSettings.from_env("facade-service", 8080, env={"LOG_FORMAT": "xml"})


def test_metrics_have_a_port_of_their_own_that_moves_with_the_instance_and_is_in_its_meta():
    from servicekit.registration import service_definition

    default = Settings.from_env("logging-service", 8081, env={})
    assert default.metrics_port == 9081
    assert Settings.from_env("logging-service", 8081, env={"PORT": "18082"}).metrics_port == 19082
    assert Settings.from_env("logging-service", 8081, env={"METRICS_PORT": "7001"}).metrics_port == 7001
    assert Settings(service_name="facade-service", port=8080).metrics_port == 9080
    with pytest.raises(SettingsError, match="METRICS_PORT must differ from PORT"):
        Settings.from_env("logging-service", 8081, env={"METRICS_PORT": "8081"})
    meta = service_definition(default)["meta"]
    assert meta["metrics_port"] == "9081" and meta["metrics_path"] == "/metrics"


def test_a_token_file_is_read_and_wins_over_the_token_variable_as_in_consul(tmp_path):
    path = tmp_path / "logging.token"
    path.write_text("from-the-file\n")
    env = {"CONSUL_HTTP_TOKEN_FILE": str(path), "CONSUL_HTTP_TOKEN": "from-the-environment"}
    assert ConsulSettings.from_env(env).token == "from-the-file"
    assert ConsulSettings.from_env({"CONSUL_HTTP_TOKEN": "from-the-environment"}).token == "from-the-environment"
    with pytest.raises(SettingsError, match="CONSUL_HTTP_TOKEN_FILE names .*missing.token, which cannot be read"):
        ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing.token")})
    (tmp_path / "empty.token").write_text("\n")
    with pytest.raises(SettingsError, match="which is empty"):
        ConsulSettings.from_env({"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "empty.token")})
    assert ConsulSettings.from_env({"CONSUL_CACERT": "/etc/consul.d/ca.pem"}).ca_file == "/etc/consul.d/ca.pem"
