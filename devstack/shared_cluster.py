"""One Hazelcast cluster for every pytest-xdist worker of a run, instead of one per worker.

An idle member costs about 4 % of a core, and every worker of the suite started three: on 2 cores the suite
spent much of its CPU on members that waited. The first worker to need the cluster starts it; the others join
it, each from its own Consul agent with a map and a queue of its own (names suffixed with the worker's id), so
no worker sees another's messages. The members' configuration names only the first worker's map and queue,
and the session cluster writes through to no database: every map and queue here has the same settings
(conf/hazelcast.xml's `default` ones mirror the named ones).

The run's directory (shared by the workers) holds the state: the cluster's name, its members (port -> pid)
and the workers using it, under a file lock. The last worker to leave stops the members; `stop_left_over`
stops whatever a worker that died left behind, from the process that started the workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import psutil

from devstack.consul_agent import ConsulAgent
from devstack.hazelcast_cluster import Adopted, HazelcastCluster, pid_alive

STATE = "hazelcast-shared.json"


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[Path]:
    with open(run_dir / f"{STATE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield run_dir / STATE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def shared_cluster(agent: ConsulAgent, run_dir: Path, worker: str) -> Iterator[HazelcastCluster]:
    """The run's cluster, seen from `agent` (this worker's): started here if the run has none yet."""
    with _locked(run_dir) as path:
        state = _read(path)
        members = {int(port): pid for port, pid in (state or {}).get("members", {}).items()}
        if state:
            dead = [port for port, pid in members.items() if not pid_alive(pid)]
            if dead:
                # Its other users still run on it: fail here rather than start a second cluster beside it.
                raise RuntimeError(
                    f"a member of the run's Hazelcast cluster died: see {run_dir}/hazelcast-{dead[0]}.log"
                )
            cluster = HazelcastCluster.joined(agent, run_dir, state["cluster_name"], members, names=worker)
        else:
            cluster = HazelcastCluster(agent, run_dir)
            try:
                cluster.start()
            except BaseException:
                cluster.stop()  # the members that did start: nobody else knows them
                raise
            members = {port: proc.pid for port, proc in cluster.members.items()}
            state = {"cluster_name": cluster.cluster_name, "members": members, "users": []}
        state["users"].append(worker)
        path.write_text(json.dumps(state))
    try:
        yield cluster
    finally:
        with _locked(run_dir) as path:
            state = _read(path) or {"users": []}
            if worker in state["users"]:
                state["users"].remove(worker)
            if state["users"]:
                path.write_text(json.dumps(state))
            else:
                path.unlink(missing_ok=True)
                cluster.stop()


def stop_left_over(run_dir: Path) -> None:
    """Stop the members of a shared cluster that no worker stopped (a worker killed, a run interrupted)."""
    with _locked(run_dir) as path:
        state = _read(path)
        if state is None:
            return
        for port, pid in state.get("members", {}).items():
            member = Adopted.of(f"hazelcast-{port}", pid, run_dir / f"hazelcast-{port}.log")
            if member.alive() and "java" in " ".join(_cmdline(pid)):
                member.stop()
        path.unlink(missing_ok=True)


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def worker_id() -> str:
    """pytest-xdist's id of this worker (gw0, gw1, ...), or `main` without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")
