"""Infrastructure fixtures: real processes on free loopback ports, so the suite runs beside ./scripts/up.

Each run writes its process logs under tests/.logs/<run>/; a failing test names the log to read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import hazelcast
import pytest

from infra import ROOT, ConsulAgent, HazelcastCluster, Service, eventually, start_service, wait_passing


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = ROOT / "tests" / ".logs" / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def consul_agent(log_dir):
    agent = ConsulAgent(log_dir).start()
    yield agent
    agent.stop()


@pytest.fixture(scope="session")
def hazelcast_cluster(consul_agent, log_dir):
    cluster = HazelcastCluster(consul_agent, log_dir).start()
    yield cluster
    cluster.stop()


@dataclass
class Stack:
    agent: ConsulAgent
    cluster: HazelcastCluster
    logging: list[Service] = field(default_factory=list)
    messages: list[Service] = field(default_factory=list)
    facade: Service | None = None

    @property
    def instances(self) -> list[Service]:
        return [*self.logging, *self.messages, self.facade]

    @property
    def url(self) -> str:
        return f"{self.facade.url}/facade"


@pytest.fixture(scope="session")
def stack(consul_agent, hazelcast_cluster, log_dir) -> Stack:
    """3 logging, 2 messages and 1 facade instance, all passing in Consul. Tests must leave it whole."""
    stack = Stack(consul_agent, hazelcast_cluster)
    stack.logging = [start_service("logging-service", consul_agent, log_dir) for _ in range(3)]
    stack.messages = [start_service("messages-service", consul_agent, log_dir) for _ in range(2)]
    stack.facade = start_service("facade-service", consul_agent, log_dir)
    try:
        for service in stack.instances:
            wait_passing(consul_agent, service)
        yield stack
    finally:
        for service in stack.instances:
            service.proc.stop()


@pytest.fixture
def start_instance(consul_agent, hazelcast_cluster, log_dir):
    """Start extra instances for one test; whatever is still running afterwards is stopped."""
    started: list[Service] = []

    def start(name: str, **kwargs) -> Service:
        service = start_service(name, kwargs.pop("agent", consul_agent), log_dir, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.proc.stop()


@pytest.fixture
def hz_client(hazelcast_cluster):
    """A test's own Hazelcast client, to look at the map and queue directly."""
    client = hazelcast.HazelcastClient(
        cluster_name=hazelcast_cluster.cluster_name,
        cluster_members=hazelcast_cluster.addresses,
        cluster_connect_timeout=30,
    )
    yield client
    client.shutdown()


__all__ = ["eventually"]
