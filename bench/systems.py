"""What the bench measures: systems (this checkout's services, or a baseline revision's, each with its
own Consul agent, map and queue on the shared Hazelcast members) and the references beside them."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hazelcast
import requests

from bench import wrk
from devstack import (
    ROOT,
    VENV_BIN,
    ConsulAgent,
    HazelcastCluster,
    Proc,
    Stack,
    build_stack,
    eventually,
    free_port,
    isolated_agent,
    metrics_url,
    prometheus_counter,
)
from servicekit import kvconfig
from stackctl.stack_status import served_requests

log = logging.getLogger("bench")

POST_BODY = json.dumps({"msg": "a benchmark message of a typical length, forty-odd chars"})
# What a facade worker can ask Consul: health queries (discovery), catalog and KV reads. Counted at the
# agent. The masters' registration keepers (agent/services, every few seconds per instance, whatever
# the load) and the bench's own health/state polls are not on the request path and are not counted.
REQUEST_PATH_QUERIES = ("consul_http_GET_v1_health_service", "consul_http_GET_v1_catalog", "consul_http_GET_v1_kv")


def logged(stop: Callable[[], object]) -> Callable[[], None]:
    """A stop step whose failure is logged: one failed stop must not keep the others running, nor lose
    the results of a finished run."""

    def step() -> None:
        try:
            stop()
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("cleanup step failed: %s", exc)

    return step


@dataclass
class System:
    """One copy of the services (this checkout, or a baseline revision) with its own agent, map and queue."""

    label: str
    agent: ConsulAgent
    stack: Stack
    hz: hazelcast.HazelcastClient
    queue_name: str
    config: kvconfig.SharedConfig
    consul_requests: float = 0.0
    facade_requests: int = 0
    # What the facade's own /metrics counted over the same runs; None for a revision without /metrics.
    facade_counted: float | None = 0.0
    results: dict = field(default_factory=dict)

    def queue(self):
        return self.hz.get_queue(self.queue_name).blocking()

    def log_map(self):
        return self.hz.get_map(kvconfig.load(self.agent.client()).map_name).blocking()


@dataclass(frozen=True)
class Reference:
    proc: Proc
    url: str


def start_reference(
    running: contextlib.ExitStack,
    log_dir: Path,
    name: str,
    downstream: str | None = None,
    path: str | None = None,
    env: dict[str, str] | None = None,
    body: str = POST_BODY,
) -> Reference:
    """A reference under bench/gunicorn.conf.py, stopped when `running` closes; it is up once a POST to
    `path` answers 201."""
    port = free_port()
    env = {"PORT": str(port), **({"REF_DOWNSTREAM": downstream} if downstream else {}), **(env or {})}
    proc = Proc(name, [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "bench" / "gunicorn.conf.py")],
                log_dir / f"{name}.log", env=env)  # fmt: skip
    running.callback(logged(proc.stop))
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def answers():
        assert proc.alive(), f"{name} exited:\n{proc.tail()}"
        target = url + (path or ("/chain" if downstream else "/echo"))
        assert requests.post(target, data=body, headers={"Content-Type": "application/json"},
                             timeout=2).status_code == 201  # fmt: skip

    eventually(answers, timeout=30, interval=0.2, what=f"{name} answering")
    return Reference(proc, url)


def start_design(running: contextlib.ExitStack, log_dir: Path, system: System, instances: int = 3) -> Reference:
    """The naive design (bench/reference.py): `instances` /design-log references writing the system's
    map, and a /design front that knows their addresses and offers to the system's queue, whose
    consumers are the system's messages instances. Returns the front; the others are stopped with it."""
    config = system.config
    env = {"REF_HZ_CLUSTER": config.cluster_name, "REF_HZ_MEMBERS": ",".join(config.members),
           "REF_MAP": config.map_name, "REF_QUEUE": config.queue_name}  # fmt: skip
    body = json.dumps({"id": str(uuid.uuid4()), "msg": "design reference warm-up"})
    logs = [start_reference(running, log_dir, f"ref-design-log-{n}", path="/design-log", env=env, body=body)
            for n in range(instances)]  # fmt: skip
    return start_reference(running, log_dir, "ref-design", path="/design",
                           env={**env, "REF_LOGGING": ",".join(r.url for r in logs)})  # fmt: skip


def start_system(
    running: contextlib.ExitStack,
    label: str,
    cluster: HazelcastCluster,
    log_dir: Path,
    root: Path,
    durable: bool = False,
) -> System:
    """The services of the source tree `root` on an agent of their own, stopped when `running` closes.
    `durable`: on the map and queue the members write through to PostgreSQL (the cluster's store, as in
    ./scripts/up); otherwise on a private map and queue, in memory only (the store switched off)."""
    if durable:
        agent = ConsulAgent(log_dir / label, name=f"consul-{label}").start()
        cluster.seed_kv(agent)
    else:
        agent = isolated_agent(cluster, log_dir / label, f"consul-{label}")
    running.callback(logged(agent.stop))
    stack = build_stack(agent, cluster, log_dir / label, logging=3, messages=2, facades=1, root=root)
    running.callback(logged(stack.stop))
    config = kvconfig.load(agent.client())
    hz = hazelcast.HazelcastClient(cluster_name=config.cluster_name, cluster_members=list(config.members))
    running.callback(logged(hz.shutdown))
    return System(label, agent, stack, hz, config.queue_name, config)


def checkout(rev: str, into: Path) -> Path:
    """The tree of `rev`, unpacked with git archive: no worktree to clean up in the repository."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def short_rev(rev: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], check=True, capture_output=True,
                          text=True)  # fmt: skip
    return done.stdout.strip()


def run_counted(system: System, url: str, connections: int, seconds: float, **kw) -> wrk.Result:
    """A wrk run at one facade, with the Consul requests its agent served meanwhile and the requests the
    facade's /metrics counted meanwhile."""
    before = prometheus_counter(system.agent, REQUEST_PATH_QUERIES)
    counted_before = facade_counted(system)
    result = wrk.run(url, connections, seconds, **kw)
    system.consul_requests += prometheus_counter(system.agent, REQUEST_PATH_QUERIES) - before
    system.facade_requests += result.requests
    counted_after = facade_counted(system)
    if system.facade_counted is not None and counted_before is not None and counted_after is not None:
        system.facade_counted += counted_after - counted_before
    else:
        system.facade_counted = None
    return result


def facade_counted(system: System) -> float | None:
    """The requests the facade counted in its /metrics (every route but /health and /metrics), summed over
    its workers, found through its Consul meta; None when it has no /metrics (a baseline revision from
    before it)."""
    url = metrics_url(system.agent, system.stack.facade)
    if url is None:
        return None
    response = requests.get(url, timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return served_requests(response.text)
