"""What each simulated or real host runs, rendered from conf/hosts/, and how a member finds the others."""

from __future__ import annotations

import configparser
from types import SimpleNamespace

from devstack import host_config
from devstack.host_config import Layout
from servicekit import kvconfig
from stackctl import hazelcast_member

LAYOUT = Layout(
    root="/opt/app", venv_bin="/opt/app/.venv/bin", consul_bin="/usr/bin/consul", consul_dir="/etc/consul.d",
    data_dir="/var/lib/consul", log_dir="/var/log/app/{host}", run_dir="/run/app", token_dir="/etc/app/{host}",
    metrics_dir="/var/lib/app/metrics",
)  # fmt: skip


def programs(host: str, address: str, app: bool) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(host_config.supervisor_config(host, address, LAYOUT.at(host), app))
    return parser


def test_an_app_host_runs_its_agent_a_member_and_each_service_bound_to_the_host_address():
    parser = programs("app2", "192.0.2.22", app=True)
    names = [s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")]
    assert names == ["consul", "hazelcast", "nginx", "logging", "messages", "facade"]
    for name in ("hazelcast", "logging", "messages", "facade"):
        env = parser[f"program:{name}"]["environment"]
        for setting in ('SERVICE_HOST="192.0.2.22"', 'INSTANCE_HOST="app2"', 'CONSUL_HTTP_ADDR="127.0.0.1:8500"',
                        'HAZELCAST_PARTITION_GROUPS="host"'):  # fmt: skip
            assert setting in env, (name, env)
    assert 'PORT="8081"' in parser["program:logging"]["environment"]
    assert parser["program:logging"]["stdout_logfile"] == "/var/log/app/app2/logging.log"
    # The facade's front door, on the facade's port at the host's address, its files in the host's run directory.
    nginx = parser["program:nginx"]
    assert nginx["command"] == (
        "/opt/app/.venv/bin/python -m stackctl front-door --port 8080 --home /run/app/nginx "
        "--access-log /var/log/app/app2/nginx-access.log"
    )
    assert nginx["environment"] == 'SERVICE_HOST="192.0.2.22"' and nginx["stopsignal"] == "QUIT"


def test_a_consul_host_runs_only_its_server():
    parser = programs("consul1", "192.0.2.11", app=False)
    assert [s for s in parser.sections() if s.startswith("program:")] == ["program:consul"]


def test_servers_expect_three_and_every_agent_joins_the_servers():
    servers = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    server = host_config.consul_config("consul1", servers[0], servers, "KEY", "/data", server=True)
    client = host_config.consul_config("app1", "192.0.2.21", servers, "KEY", "/data", server=False)
    assert "bootstrap_expect = 3" in server and "server           = true" in server
    assert "server         = false" in client and "bootstrap_expect" not in client
    for config in (server, client):
        assert 'retry_join       = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]' in config.replace(
            "retry_join     =", "retry_join       ="
        )
        assert "encrypt" in config and '"KEY"' in config


def test_a_member_binds_and_registers_loopback_unless_told_the_host_address():
    default = hazelcast_member.hazelcast_member_command(5701, "dev", "127.0.0.1:5701", hazelcast_member.DEFAULT_JAR)
    assert "-Dhz.interface=127.0.0.1" in default
    on_host = hazelcast_member.hazelcast_member_command(5701, "c", "m", hazelcast_member.DEFAULT_JAR, host="192.0.2.21")
    assert "-Dhz.interface=192.0.2.21" in on_host
    (definition,) = hazelcast_member.service_definitions([5701], "192.0.2.21", "app1")
    assert definition["id"] == "hazelcast-app1-5701"
    assert definition["address"] == "192.0.2.21" and definition["check"]["tcp"] == "192.0.2.21:5701"


class FakeConsul:
    """Only what join_list reads: passing `hazelcast` entries and one KV key."""

    def __init__(self, passing: list[tuple[str, int]], members_in_kv: str):
        entries = [{"Service": {"ID": f"h{p}", "Address": a, "Port": p}, "Node": {"Address": a}} for a, p in passing]
        self.health = SimpleNamespace(service=lambda name, passing: (0, entries if name == "hazelcast" else []))
        self.kv = SimpleNamespace(get=lambda key: (0, {"Value": members_in_kv.encode()}))


def test_a_member_joins_the_members_passing_in_consul_and_the_kv_list_when_none_passes():
    kv = "192.0.2.21:5701,192.0.2.22:5701"
    passing = [("192.0.2.23", 5701), ("192.0.2.22", 5701)]
    assert hazelcast_member.join_list(FakeConsul(passing, kv)) == "192.0.2.22:5701,192.0.2.23:5701"
    assert hazelcast_member.join_list(FakeConsul([], kv)) == kv
    assert kvconfig.KEY_MEMBERS == "config/hazelcast/members"
