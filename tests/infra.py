"""Real infrastructure on free loopback ports: a Consul dev agent, Hazelcast members, gunicorn instances.

Used by tests/conftest.py and by ./scripts/bench. Every process writes its own log file, so a failure
shows why; every wait has a deadline.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import consul
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servicekit import kvconfig  # noqa: E402
from servicekit.hazelcast_member import DEFAULT_JAR, hazelcast_member_command  # noqa: E402
from servicekit.settings import instance_id  # noqa: E402
from servicekit.stack_status import aggregate_status  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SERVICES = {
    # service name -> (package with gunicorn.conf.py)
    "facade-service": "facade",
    "logging-service": "logging_svc",
    "messages-service": "messages_svc",
}

T = TypeVar("T")
log = logging.getLogger(__name__)


def eventually(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, what: str = "") -> T:
    """Call `check` until it returns without raising AssertionError (or a connection error), then return
    its result; after `timeout`, raise the last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, requests.RequestException, consul.ConsulException) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"not true after {timeout:.0f} s{': ' + what if what else ''}: {exc!r}") from exc
        time.sleep(interval)


def record(log_dir: Path, name: str, figures: dict) -> None:
    """Keep a test's measured figures beside its process logs, as tests/.logs/<run>/<name>.json."""
    (log_dir / f"{name}.json").write_text(json.dumps(figures, indent=1))


def replace_block(doc: Path, name: str, body: str) -> None:
    """Rewrite the part of `doc` between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`: figures in the
    docs are written by the code that measured them, the prose around them by hand."""
    text = doc.read_text()
    begin, end = f"<!-- {name}:begin", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise RuntimeError(f"{doc} has no block {begin} ... {end}")
    before, rest = text.split(begin, 1)
    marker, rest = rest.split("-->", 1)
    _, after = rest.split(end, 1)
    doc.write_text(f"{before}{begin}{marker}-->\n{body.strip()}\n{end}{after}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lib_sh(function: str, *args: str) -> subprocess.CompletedProcess:
    """Run one function of scripts/lib.sh, so the tests apply the scripts' rules rather than a copy."""
    return subprocess.run(
        ["bash", "-c", 'source "$0" && "$@"', str(ROOT / "scripts" / "lib.sh"), function, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def consul_binary() -> str:
    """The consul ./scripts/up would run: one on PATH only in a version the project supports."""
    done = _lib_sh("consul_bin")
    for line in done.stderr.splitlines():
        log.warning("%s", line.removeprefix("==> "))
    if done.returncode != 0:
        raise RuntimeError("no consul binary: run ./scripts/install")
    return done.stdout.strip()


def consul_version(binary: str) -> tuple[int, int, int]:
    done = _lib_sh("consul_version", binary)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} version did not say which Consul it is")
    major, minor, patch = (int(part) for part in done.stdout.strip().split("."))
    return major, minor, patch


# Consul 1.14 gives a dev agent (a server) a gRPC TLS port, 8503 unless told otherwise; older versions
# reject the flag.
GRPC_TLS_SINCE = (1, 14, 0)


def agent_port_flags(version: tuple[int, int, int], ports: dict[str, int]) -> list[str]:
    """Flags that put every listener a dev agent of this version opens on `ports` or switch it off, so
    two test agents, or a test agent and ./scripts/up's on the default ports, never collide."""
    flags = {**ports, "https": -1}
    if version >= GRPC_TLS_SINCE:
        flags["grpc-tls"] = -1
    return [f"-{flag}-port={port}" for flag, port in flags.items()]


@dataclass
class Proc:
    """A child process with its own log file and process group."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill9(self) -> None:
        """Kill the whole process group at once: the instance dies without a word to anyone."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class ConsulAgent:
    def __init__(self, log_dir: Path, name: str = "consul"):
        binary = consul_binary()
        self.http_port = free_port()
        self.ports = {flag: free_port() for flag in ("dns", "serf-lan", "serf-wan", "server", "grpc")}
        self.ports["http"] = self.http_port
        self.proc = Proc(
            name,
            [
                binary, "agent", "-dev",
                f"-config-file={ROOT / 'consul' / 'agent.hcl'}",
                f"-node=test-{uuid.uuid4().hex[:8]}",
                *agent_port_flags(consul_version(binary), self.ports),
            ],
            log_dir / f"{name}.log",
        )

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def client(self, timeout: float = 5.0) -> consul.Consul:
        return consul.Consul(host="127.0.0.1", port=self.http_port, connections_timeout=timeout)

    def start(self, timeout: float = 30.0) -> "ConsulAgent":
        self.proc.start()
        client = self.client(timeout=1.0)

        def leader_elected():
            assert self.proc.alive(), f"consul exited:\n{self.proc.tail()}"
            assert client.status.leader(), "no leader yet"

        eventually(leader_elected, timeout, what="Consul dev agent elected itself leader")
        return self

    def stop(self) -> None:
        self.proc.stop(signal.SIGINT)

    def relaunch(self, timeout: float = 30.0) -> None:
        """Start a stopped agent again on the same ports: a dev agent comes back empty."""
        self.proc = Proc(self.proc.name, self.proc.args, self.proc.log_path)
        self.start(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.relaunch(timeout)


class HazelcastCluster:
    """`size` members on free ports, configured from Consul KV the way ./scripts/up does it."""

    def __init__(self, agent: ConsulAgent, log_dir: Path, size: int = 3):
        self.agent = agent
        self.log_dir = log_dir
        self.ports = [free_port() for _ in range(size)]
        self.cluster_name = f"test-{uuid.uuid4().hex[:8]}"
        self.members: dict[int, Proc] = {}

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def seed_kv(
        self, agent: ConsulAgent | None = None, queue_name: str = "messages-queue", map_name: str = "messages-log"
    ) -> None:
        """Write this cluster's settings into Consul KV (by default the cluster's own agent)."""
        values = kvconfig.seed_values()
        values.update(
            {
                kvconfig.KEY_CLUSTER_NAME: self.cluster_name,
                kvconfig.KEY_MEMBERS: ",".join(self.addresses),
                kvconfig.KEY_QUEUE: queue_name,
                kvconfig.KEY_MAP: map_name,
            }
        )
        kvconfig.seed((agent or self.agent).client(), values)

    def start_member(self, port: int) -> Proc:
        command = hazelcast_member_command(port, self.cluster_name, ",".join(self.addresses), DEFAULT_JAR)
        proc = Proc(f"hazelcast-{port}", command, self.log_dir / f"hazelcast-{port}.log").start()
        self.members[port] = proc
        return proc

    def register(self, port: int) -> None:
        subprocess.run(
            [sys.executable, "-m", "servicekit.ops", "register-hazelcast", str(port)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "CONSUL_HTTP_ADDR": self.agent.addr},
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self, timeout: float = 90.0) -> "HazelcastCluster":
        if not DEFAULT_JAR.is_file():
            raise RuntimeError(f"no Hazelcast jar at {DEFAULT_JAR}: run ./scripts/install")
        self.seed_kv()
        for port in self.ports:
            self.start_member(port)
            self.register(port)
        client = self.agent.client()
        eventually(
            lambda: self._assert_passing(client),
            timeout,
            interval=0.5,
            what=f"{len(self.ports)} Hazelcast members passing",
        )
        return self

    def _assert_passing(self, client: consul.Consul) -> None:
        for proc in self.members.values():
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
        _, entries = client.health.service(kvconfig.HAZELCAST_SERVICE, passing=True)
        assert len(entries) == len(self.ports), f"{len(entries)} members passing"

    def stop(self) -> None:
        for proc in self.members.values():
            proc.stop()


@dataclass
class Service:
    name: str
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance_id(self) -> str:
        return instance_id(self.name, self.port)


def start_service(
    name: str,
    agent: ConsulAgent,
    log_dir: Path,
    port: int | None = None,
    env: dict[str, str] | None = None,
    root: Path = ROOT,
) -> Service:
    """Start one instance under gunicorn with its service's gunicorn.conf.py, as ./scripts/up does.

    `root` is the source tree to run: ./scripts/bench --baseline runs an older checkout beside this one.
    """
    port = port or free_port()
    package = SERVICES[name]
    proc = Proc(
        f"{package}-{port}",
        [str(VENV_BIN / "gunicorn"), "-c", str(root / package / "gunicorn.conf.py")],
        log_dir / f"{package}-{port}.log",
        env={"PORT": str(port), "CONSUL_HTTP_ADDR": agent.addr, "PYTHONPATH": str(root), **(env or {})},
        cwd=root,
    ).start()
    return Service(name, port, proc)


def check_status(client: consul.Consul, instance_id: str) -> str | None:
    """The aggregate status of one instance's checks, or None when Consul does not know it."""
    _, entries = client.health.state("any")
    statuses = {e["Status"] for e in entries if e.get("ServiceID") == instance_id}
    if not statuses:
        return None
    return aggregate_status(statuses)


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

    def start(self, name: str, port: int | None = None) -> Service:
        return start_service(name, self.agent, self.log_dir, port=port, env=self.env, root=self.root)

    def replace(self, service: Service) -> Service:
        """A new instance of the same service on the same port (so the same instance id)."""
        new = self.start(service.name, port=service.port)
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
            service.proc.stop()


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


def prometheus_counter(agent: ConsulAgent, prefix: str | tuple[str, ...]) -> float:
    """The sum of the agent's cumulative `<prefix>*_count` samples (see telemetry in consul/agent.hcl);
    several prefixes are summed from one read."""
    text = requests.get(f"http://{agent.addr}/v1/agent/metrics?format=prometheus", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(prefix) and name.split("{")[0].endswith("_count"):
            total += float(value)
    return total


@dataclass
class Outcome:
    seq: int
    status: int | None
    body: dict | None
    error: str | None
    at: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400


class Load:
    """Bounded concurrent load on loopback: `clients` threads call `send(session, seq)` in a loop until
    the block ends, `max_requests` were sent, or `max_seconds` passed, whichever comes first.

        with Load(lambda s, n: s.post(url, json={"msg": f"m{n}"}, timeout=10)) as load:
            ...break something...
        assert load.failures() == []
    """

    def __init__(
        self,
        send: Callable[[requests.Session, int], requests.Response],
        clients: int = 4,
        max_requests: int = 5000,
        max_seconds: float = 60.0,
        pause: float = 0.005,
        keep_alive: bool = True,
    ):
        self._send = send
        self._clients = clients
        self._max_requests = max_requests
        self._pause = pause
        self._keep_alive = keep_alive
        self._deadline = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _next(self) -> int | None:
        with self._lock:
            if self._seq >= self._max_requests or time.monotonic() > self._deadline:
                return None
            self._seq += 1
            return self._seq

    def _run(self) -> None:
        session = requests.Session()
        if not self._keep_alive:
            session.headers["Connection"] = "close"
        while not self._stop.is_set():
            seq = self._next()
            if seq is None:
                return
            try:
                response = self._send(session, seq)
                try:
                    body = response.json()
                except ValueError:
                    body = None
                outcome = Outcome(seq, response.status_code, body, None, time.monotonic())
            except requests.RequestException as exc:
                outcome = Outcome(seq, None, None, f"{type(exc).__name__}: {exc}", time.monotonic())
            with self._lock:
                self.outcomes.append(outcome)
            self._stop.wait(self._pause)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until at least `count` requests completed, so a fault lands in the middle of the load."""
        eventually(lambda: self._assert_done(count), timeout)

    def _assert_done(self, count: int) -> None:
        assert len(self.outcomes) >= count, f"{len(self.outcomes)} of {count} requests done"

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def succeeded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]


def passing_to_first_request(stack: Stack, load: Load) -> float:
    """Start a logging instance under `load`; seconds from Consul reporting it passing to the first
    acknowledged POST it served."""
    client = stack.agent.client()
    new = stack.start("logging-service")
    stack.logging.append(new)

    def passing_since():
        assert check_status(client, new.instance_id) == "passing"
        return time.monotonic()

    passing_at = eventually(passing_since, timeout=30, interval=0.01)

    def first_request():
        hits = [o.at for o in list(load.outcomes) if o.ok and o.body.get("logged_by") == new.instance_id]
        assert hits, "no request reached the new instance yet"
        return min(hits)

    return eventually(first_request, timeout=10, interval=0.01) - passing_at
