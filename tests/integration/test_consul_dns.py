"""Consul's DNS interface, on a real agent: an SRV query for a service lists exactly its passing instances.

The instances are stubs registered with the product's service definition: two answer /health, one port has
nobody listening, so its check goes critical.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.resolver
import pytest

from devstack import ConsulAgent, check_status, eventually, free_port
from servicekit.registration import service_definition
from servicekit.settings import Settings

SERVICE = "logging-service"


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def agent(log_dir):
    agent = ConsulAgent(log_dir, name="consul-dns").start()
    yield agent
    agent.stop()


@pytest.fixture
def healthy_servers():
    servers = []

    def start() -> int:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
        threading.Thread(target=server.serve_forever, name="healthy-stub", daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _srv_ports(agent: ConsulAgent, name: str) -> set[int]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = agent.ports["dns"]
    resolver.lifetime = 3.0
    try:
        answer = resolver.resolve(name, "SRV")
    except dns.resolver.NXDOMAIN:
        return set()
    return {record.port for record in answer}


def test_an_srv_query_lists_exactly_the_passing_instances(agent, healthy_servers):
    client = agent.client()
    passing = {healthy_servers(), healthy_servers()}
    dead = free_port()  # nobody listens: its check turns critical
    ids = {}
    for port in (*passing, dead):
        settings = Settings(service_name=SERVICE, port=port)
        client.agent.service.register(**service_definition(settings))
        ids[port] = settings.instance_id

    def settled():
        assert {port: check_status(client, ids[port]) for port in ids} == {
            **{port: "passing" for port in passing},
            dead: "critical",
        }

    eventually(settled, timeout=15, what="two stubs passing, one critical")
    assert _srv_ports(agent, f"{SERVICE}.service.consul") == passing

    # The answer follows the checks: once in maintenance, an instance is no longer listed.
    drained = sorted(passing)[0]
    client.agent.service.maintenance(ids[drained], True, "dns test")
    eventually(lambda: _srv_equals(agent, passing - {drained}), timeout=5)


def _srv_equals(agent: ConsulAgent, expected: set[int]) -> None:
    assert _srv_ports(agent, f"{SERVICE}.service.consul") == expected
