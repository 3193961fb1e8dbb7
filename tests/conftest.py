"""Infrastructure fixtures: real processes on free loopback ports, so the suite runs beside ./scripts/up.

Each run writes its process logs under tests/.logs/<run>/; a failing test names the log to read.

The suite runs in pytest-xdist workers (`-n`, `--dist loadgroup` in pyproject.toml): each worker is a
session of its own, with its own Consul agent, started when its first test asks for it; the session's `stack`
is built in one worker, which runs every test on it (the `session_stack` group); the Hazelcast cluster behind
them is one for the whole run (devstack/shared_cluster.py). Tests marked with the
same `xdist_group` run in one worker, one after the other: the tests of a module that share a module-scoped
fixture (or each worker would build it), and those that must not overlap each other (see
docs/ARCHITECTURE.md, *The tests*).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import hazelcast
import pytest
from hypothesis import HealthCheck, settings

from devstack import ROOT, ConsulAgent, HazelcastCluster, Service, Stack, build_stack, isolated_agent, start_service
from devstack.postgres import PostgresServer
from devstack.shared_cluster import shared_cluster, stop_left_over, worker_id
from devstack.stubs import StubInstance, stubbed_facade

# Hypothesis times each example (a deadline, 200 ms unless a test sets one) and its data generation
# (too_slow): on 2 cores shared by the suite's workers, one example stretched past them (3 s against a deadline
# of 2 s, 18 ms when run again) fails a run with "Unreliable test timings" and says nothing about the code.
# So no test sets a deadline; the requests a property test makes have timeouts of their own.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

# The run's directory under tests/.logs/, named once by the process that starts the run: the xdist workers
# it spawns inherit the variable, so every worker writes into the same directory.
RUN_LOGS = "TESTS_RUN_LOGS"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        os.environ[RUN_LOGS] = str(ROOT / "tests" / ".logs" / time.strftime("%Y%m%d-%H%M%S"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the process that started the workers, once they are gone: the shared cluster's members, if a
    worker that died left them running."""
    run_logs = Path(os.environ[RUN_LOGS])
    if not hasattr(session.config, "workerinput") and run_logs.is_dir():
        stop_left_over(run_logs)


def xdist_groups(item: pytest.Item) -> set[str]:
    return {str(m.args[0] if m.args else m.kwargs.get("name")) for m in item.iter_markers("xdist_group")}


# The groups that take longest, one after the other in one worker each (several minutes: full ./scripts/up
# stacks started again and again, a host simulation): handed out first, so that the run does not end waiting
# on one that started last. xdist hands work out in collection order.
# Longest first (fresh-clone runs of 2026-12-07): in one group each, the script and durable stacks' tests took
# 870 to 950 s of a 950 s run, one after the other; in two each, with a worker for every long group, they run
# side by side.
LONG_GROUPS = ("durable_stack", "script_stack_killed", "durable_stack_purged", "script_stack", "hosts")


# The tests on the session's `stack` (every one whose fixtures include it).
SESSION_STACK = "session_stack"


# First: xdist's own hook reads the groups to name each test's (and the groups added here must be there).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One group per test, at most: xdist joins the names of a test's xdist_group marks into a group of their
    own, which would split the test from the groups it was meant to share a worker with. Every test on the
    session's `stack` is in the `session_stack` group; then the long groups go first."""
    several = {item.nodeid: sorted(xdist_groups(item)) for item in items if len(xdist_groups(item)) > 1}
    if several:
        raise pytest.UsageError(f"tests in more than one xdist_group: {several}")
    on_stack = [item for item in items if "stack" in getattr(item, "fixturenames", ())]
    # One worker builds the session's `stack` and runs every test on it (about 110 s of tests): in each
    # worker that ran one, it cost a start and minutes of idle processes (16 of them, ~5 CPU-s a minute).
    for item in on_stack:
        if not xdist_groups(item):
            item.add_marker(pytest.mark.xdist_group(SESSION_STACK))
    elsewhere = sorted(item.nodeid for item in on_stack if SESSION_STACK not in xdist_groups(item))
    if elsewhere:
        raise pytest.UsageError(f"tests on the session's stack in another group than {SESSION_STACK!r}: {elsewhere}")

    def first_the_long_groups(item: pytest.Item) -> int:
        groups = xdist_groups(item)
        return next((n for n, group in enumerate(LONG_GROUPS) if group in groups), len(LONG_GROUPS))

    items.sort(key=first_the_long_groups)  # stable: every module's and group's own order is kept


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Each phase's report on its test (item.rep_call): fixtures that clean up after a failure only read it."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = Path(os.environ[RUN_LOGS])
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
    """The run's one cluster, shared by the xdist workers, each on a map and queue of its own
    (devstack/shared_cluster.py); tests that stop or cut members start clusters of their own."""
    with shared_cluster(consul_agent, log_dir, worker_id()) as cluster:
        yield cluster


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
        service.stop()


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
