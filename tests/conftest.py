"""Infrastructure fixtures: real processes on free loopback ports, so the suite runs beside ./scripts/up.

Each run writes its process logs under tests/.logs/<run>/; a failing test names the log to read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import hazelcast
import pytest

from devstack import ROOT, ConsulAgent, HazelcastCluster, Service, Stack, build_stack, isolated_agent, start_service
from devstack.postgres import PostgresServer
from devstack.stubs import StubInstance, stubbed_facade


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


@pytest.fixture
def own_agent(log_dir, request):
    """A Consul dev agent of the test's own and nothing else in it: for tests of Consul's own behaviour."""
    agent = ConsulAgent(log_dir, name=f"consul-{request.node.name[:40]}").start()
    yield agent
    agent.stop()


@pytest.fixture
def own_database(log_dir, request):
    """A PostgreSQL of the test's own on a free port, made and migrated as ./scripts/up does it, its data beside
    the test's logs (the postgres user must reach the directory); stop() and start() keep the data."""
    name = f"postgres-{request.node.name[:30]}"
    server = PostgresServer(log_dir / name, log_dir, name=name).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def hazelcast_cluster(consul_agent, log_dir):
    cluster = HazelcastCluster(consul_agent, log_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def stack(consul_agent, hazelcast_cluster, log_dir):
    """3 logging, 2 messages and 1 facade instance, all passing in Consul. Tests must leave it whole."""
    stack = build_stack(consul_agent, hazelcast_cluster, log_dir)
    yield stack
    stack.stop()


@contextlib.contextmanager
def _isolated_stacks(cluster: HazelcastCluster, log_dir: Path, name: str) -> Iterator[Callable[..., Stack]]:
    """Build stacks, each with a Consul agent of its own, on the shared cluster; all stopped at the end."""
    stacks: list[Stack] = []

    def make(**sizes) -> Stack:
        agent = isolated_agent(cluster, log_dir, name=name)
        try:
            stacks.append(build_stack(agent, cluster, log_dir, **sizes))
        except BaseException:
            agent.stop()
            raise
        return stacks[-1]

    try:
        yield make
    finally:
        for stack in stacks:
            stack.stop()
            stack.agent.stop()


@pytest.fixture
def own_stack(hazelcast_cluster, log_dir, request):
    """A stack a test may break: its own Consul agent, its own map and queue on the shared cluster."""
    with _isolated_stacks(hazelcast_cluster, log_dir, f"consul-{request.node.name[:40]}") as make:
        yield make


@pytest.fixture(scope="module")
def module_stack(hazelcast_cluster, log_dir, request):
    """As own_stack, for the tests of one module to share: a module-scoped fixture of the module builds it
    once (`return module_stack(logging=2)`); the tests must leave it as they found it."""
    with _isolated_stacks(hazelcast_cluster, log_dir, f"consul-{request.module.__name__[:40]}") as make:
        yield make


@pytest.fixture
def facade_before(hazelcast_cluster, log_dir, request):
    """devstack.stubs.stubbed_facade for one test: `facade_before(stubs, env=None)` starts the stubs and a real
    facade in front of them, in a Consul agent named after the test; all stopped after the test."""
    with contextlib.ExitStack() as started:

        def start(stubs: Sequence[StubInstance], env: dict[str, str] | None = None) -> Service:
            name = f"consul-{request.node.name[:40]}"
            return started.enter_context(stubbed_facade(hazelcast_cluster, log_dir, name, stubs, env))

        yield start


@pytest.fixture
def start_instance(consul_agent, hazelcast_cluster, log_dir):
    """Start extra instances for one test; whatever is still running afterwards is stopped."""
    started = []

    def start(name: str, **kwargs):
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
