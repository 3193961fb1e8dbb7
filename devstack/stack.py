"""Service instances under gunicorn, registered with a Consul agent, on a Hazelcast cluster: one at a
time (`start_service`), or a whole stack started at once and stopped at once (`build_stack`,
`running_stack`). Every facade has its nginx in front, as in ./scripts/up (stackctl/front_door.py):
its port is nginx's, and its gunicorn listens behind it on 127.0.0.1 at a free port of its own (APP_PORT)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from devstack.consul_agent import ConsulAgent, check_status
from devstack.hazelcast_cluster import HazelcastCluster
from devstack.ports import free_port
from devstack.postgres import PostgresServer
from devstack.processes import ROOT, VENV_BIN, Proc, eventually
from servicekit import metrics_files
from servicekit.settings import instance_id
from stackctl import front_door

SERVICES = {
    # service name -> (package with gunicorn.conf.py)
    "facade-service": "facade",
    "logging-service": "logging_svc",
    "messages-service": "messages_svc",
}
# The services clients reach, each behind its nginx.
FRONTED = {"facade-service"}


@dataclass
class Service:
    """One instance: `proc` is its gunicorn master; a facade's `front` is its nginx, which listens on `port`
    (the instance's public and registered port) and passes to gunicorn on 127.0.0.1:`app_port`."""

    name: str
    port: int
    proc: Proc
    metrics_port: int | None = None
    front: Proc | None = None
    app_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance_id(self) -> str:
        return instance_id(self.name, self.port)

    def stop(self) -> None:
        """gunicorn first (it drains behind its nginx), then nginx, gracefully."""
        self.proc.stop()
        self.stop_front()

    def stop_front(self) -> None:
        if self.front is not None:
            self.front.stop(signal.SIGQUIT)


def start_front_door(port: int, log_dir: Path, env: dict[str, str]) -> Proc:
    """nginx on `port`, in front of the gunicorn at APP_PORT of `env`, as ./scripts/up runs it (the same
    configuration; nginx started here directly rather than through stackctl)."""
    door = front_door.for_facade(port, log_dir / f"nginx-{port}", env={**os.environ, **env})
    door.write()
    return Proc(f"nginx-{port}", door.command(), log_dir / f"nginx-{port}.log").start()


def start_service(
    name: str,
    agent: ConsulAgent,
    log_dir: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    root: Path = ROOT,
    front: Proc | None = None,
    app_port: int | None = None,
) -> Service:
    """Start one instance under gunicorn with its service's gunicorn.conf.py, as ./scripts/up does; a facade
    with its nginx in front (`front`, when given and still running, is kept with the `app_port` it passes to:
    a facade started again on the same port finds its nginx where it left it, as under supervisord).

    `root` is the source tree to run: ./scripts/bench --baseline runs an older checkout beside this one.
    gunicorn runs in `root` and puts it first on sys.path (its `chdir` setting), so that tree's packages
    win over this checkout's editable install.
    """
    port = port or free_port()
    package = SERVICES[name]
    env = {
        "PORT": str(port),
        "CONSUL_HTTP_ADDR": agent.addr,
        # Its metrics in the test run's own directory, never in a shared one, and on a free port.
        "METRICS_DIR": str(log_dir / "metrics"),
        "METRICS_PORT": str(free_port()),
        **(env or {}),
    }
    # A tree from before the front door (./scripts/bench --baseline) runs its facade on PORT itself, as then.
    if name in FRONTED and (root / "stackctl" / "front_door.py").exists():
        # PORT stays the public one, which the instance registers; gunicorn itself listens behind nginx.
        if front is not None and front.alive():
            if app_port is None:
                raise ValueError("a facade behind a running front door needs the APP_PORT it passes to")
        else:
            front = None
        env["APP_PORT"] = str(app_port or free_port())
        app_port = int(env["APP_PORT"])
        front = front or start_front_door(port, log_dir, env)
    else:
        front, app_port = None, None
    args = [str(VENV_BIN / "gunicorn"), "-c", str(root / package / "gunicorn.conf.py")]
    proc = Proc(f"{package}-{port}", args, log_dir / f"{package}-{port}.log", env=env, cwd=root).start()
    return Service(name, port, proc, int(env["METRICS_PORT"]), front, app_port)


def metrics_url(agent: ConsulAgent, service: Service) -> str | None:
    """Where `service` serves its metrics, as its registration in `agent` says (as Prometheus finds it);
    None when it registered no metrics path."""
    registered = agent.client().agent.services()[service.instance_id]
    return metrics_files.metrics_url(registered)


def wait_passing(agent: ConsulAgent, service: Service, timeout: float = 60.0) -> Service:
    client = agent.client()

    def passing():
        assert service.proc.alive(), f"{service.proc.name} exited:\n{service.proc.tail()}"
        assert check_status(client, service.instance_id) == "passing", f"{service.instance_id} not passing yet"

    eventually(passing, timeout, interval=0.2, what=f"{service.instance_id} passing in Consul")
    return service


@dataclass
class Stack:
    """A set of instances registered with one Consul agent, on the shared Hazelcast cluster."""

    agent: ConsulAgent
    cluster: HazelcastCluster
    log_dir: Path
    logging: list[Service] = field(default_factory=list)
    messages: list[Service] = field(default_factory=list)
    facades: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    root: Path = ROOT

    @property
    def facade(self) -> Service:
        return self.facades[0]

    @property
    def instances(self) -> list[Service]:
        return [*self.logging, *self.messages, *self.facades]

    @property
    def url(self) -> str:
        return f"{self.facade.url}/facade"

    def start(
        self, name: str, port: int | None = None, front: Proc | None = None, app_port: int | None = None
    ) -> Service:
        return start_service(
            name, self.agent, self.log_dir, port=port, env=self.env, root=self.root, front=front, app_port=app_port
        )

    def replace(self, service: Service) -> Service:
        """A new instance of the same service on the same port (so the same instance id), behind the same
        nginx when it has one."""
        new = self.start(service.name, port=service.port, front=service.front, app_port=service.app_port)
        for group in (self.logging, self.messages, self.facades):
            if service in group:
                group[group.index(service)] = new
        return new

    def wait_all_passing(self, timeout: float = 60.0) -> None:
        for service in self.instances:
            wait_passing(self.agent, service, timeout)

    def stop(self) -> None:
        # Signal every instance first, then wait: each one drains for DRAIN_SECONDS on its own.
        for service in self.instances:
            service.proc.send_signal(signal.SIGTERM)
        for service in self.instances:
            service.stop()


def build_stack(
    agent: ConsulAgent,
    cluster: HazelcastCluster,
    log_dir: Path,
    logging: int = 3,
    messages: int = 2,
    facades: int = 1,
    env: dict[str, str] | None = None,
    root: Path = ROOT,
) -> Stack:
    """Start the instances all at once, then wait until every one passes its check."""
    stack = Stack(agent, cluster, log_dir, env=env or {}, root=root)
    stack.logging = [stack.start("logging-service") for _ in range(logging)]
    stack.messages = [stack.start("messages-service") for _ in range(messages)]
    stack.facades = [stack.start("facade-service") for _ in range(facades)]
    try:
        stack.wait_all_passing()
    except BaseException:
        stack.stop()
        raise
    return stack


def isolated_agent(cluster: HazelcastCluster, log_dir: Path, name: str) -> ConsulAgent:
    """A Consul agent of its own, pointing at the shared cluster with a private map and queue, so what
    happens there (killed instances, a restarted agent) cannot disturb any other test's data."""
    agent = ConsulAgent(log_dir, name=name).start()
    suffix = uuid.uuid4().hex[:8]
    cluster.seed_kv(agent, queue_name=f"queue-{suffix}", map_name=f"log-{suffix}")
    return agent


@contextlib.contextmanager
def running_stack(
    log_dir: Path,
    members: int = 3,
    logging: int = 3,
    messages: int = 2,
    facades: int = 1,
    heap: str | None = None,
    env: dict[str, str] | None = None,
    store: PostgresServer | None = None,
) -> Iterator[Stack]:
    """A whole system of its own: a Consul agent, `members` Hazelcast members (writing through to `store`,
    a running PostgreSQL, when given) and the instances, every one of them passing; on leaving, everything
    stops in the reverse order, whatever happened."""
    with contextlib.ExitStack() as running:
        agent = ConsulAgent(log_dir)
        running.callback(agent.stop)
        agent.start()
        cluster = HazelcastCluster(agent, log_dir, size=members, heap=heap, store=store)
        running.callback(cluster.stop)
        cluster.start()
        stack = build_stack(agent, cluster, log_dir, logging=logging, messages=messages, facades=facades, env=env)
        running.callback(stack.stop)
        yield stack
