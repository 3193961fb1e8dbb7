"""Consul's DNS interface, on a real agent: an SRV query for a service lists exactly its passing instances.

The instances are stubs (devstack.stubs.StubInstance) registered with the product's service definition: two
answer /health, one port has nobody listening, so its check goes critical.
"""

from __future__ import annotations

import dns.resolver
import pytest

from devstack import ConsulAgent, check_status, eventually, free_port
from devstack.stubs import StubInstance
from servicekit.registration import service_definition
from servicekit.settings import Settings

SERVICE = "logging-service"


@pytest.fixture
def healthy_stubs(own_agent):
    """Start and register stub instances whose /health passes; all stopped afterwards."""
    client = own_agent.client()
    stubs: list[StubInstance] = []

    def start() -> StubInstance:
        stub = StubInstance(SERVICE)
        stub.start(client)
        stubs.append(stub)
        return stub

    yield start
    for stub in stubs:
        stub.stop(client)


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


def test_an_srv_query_lists_exactly_the_passing_instances(own_agent, healthy_stubs):
    agent = own_agent
    client = agent.client()
    stubs = [healthy_stubs(), healthy_stubs()]
    passing = {stub.port for stub in stubs}
    ids = {stub.port: stub.instance_id for stub in stubs}
    dead = Settings(service_name=SERVICE, port=free_port())  # nobody listens: its check turns critical
    client.agent.service.register(**service_definition(dead))
    ids[dead.port] = dead.instance_id

    def settled():
        assert {port: check_status(client, ids[port]) for port in ids} == {
            **{port: "passing" for port in passing},
            dead.port: "critical",
        }

    eventually(settled, timeout=15, what="two stubs passing, one critical")
    assert _srv_ports(agent, f"{SERVICE}.service.consul") == passing

    # The answer follows the checks: once in maintenance, an instance is no longer listed.
    drained = sorted(passing)[0]
    client.agent.service.maintenance(ids[drained], True, "dns test")
    eventually(lambda: _srv_equals(agent, passing - {drained}), timeout=5)


def _srv_equals(agent: ConsulAgent, expected: set[int]) -> None:
    assert _srv_ports(agent, f"{SERVICE}.service.consul") == expected
