"""Hazelcast members on free loopback ports, configured from Consul KV and registered the way
./scripts/up does it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import consul
import psutil

from devstack.consul_agent import ConsulAgent
from devstack.ports import free_port
from devstack.postgres import PostgresServer
from devstack.processes import ROOT, Proc, eventually
from servicekit import kvconfig
from stackctl.hazelcast_member import DEFAULT_JAR, STORE_JARS, hazelcast_member_command, store_mode

MAP_NAME = "messages-log"
QUEUE_NAME = "messages-queue"


class HazelcastCluster:
    """`size` members on free ports, configured from Consul KV the way ./scripts/up does it.

    With `store`, the map MAP_NAME and the queue QUEUE_NAME (the names seed_kv writes by default) write through
    to that PostgreSQL, as in ./scripts/up; the private maps and queues of isolated_agent stay in memory."""

    def __init__(
        self,
        agent: ConsulAgent,
        log_dir: Path,
        size: int = 3,
        heap: str | None = None,
        store: PostgresServer | None = None,
    ):
        self.agent = agent
        # None: conf/stack.env's HAZELCAST_HEAP, as ./scripts/up.
        self.heap = heap
        # HAZELCAST_STORE=off switches the store off here as in ./scripts/up: what the log was before it.
        self.store = store if store_mode() == "postgres" else None
        self.log_dir = log_dir
        self.ports = [free_port() for _ in range(size)]
        self.cluster_name = f"test-{uuid.uuid4().hex[:8]}"
        self.members: dict[int, Proc] = {}
        # What seed_kv names by default: the names the members' configuration writes through, unless this
        # is a cluster another process started (joined).
        self.map_name, self.queue_name = MAP_NAME, QUEUE_NAME

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def seed_kv(
        self, agent: ConsulAgent | None = None, queue_name: str | None = None, map_name: str | None = None
    ) -> None:
        """Write this cluster's settings into Consul KV (by default the cluster's own agent and names)."""
        queue_name, map_name = queue_name or self.queue_name, map_name or self.map_name
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
        if self.store is not None:
            self.store.register((agent or self.agent).client())

    def start_member(self, port: int) -> Proc:
        command = hazelcast_member_command(
            port,
            self.cluster_name,
            ",".join(self.addresses),
            DEFAULT_JAR,
            self.heap,
            names=(MAP_NAME, QUEUE_NAME),
            store=None if self.store is None else self.store.store_settings(),
        )
        env = {} if self.store is None else {"PGPASSFILE": str(self.store.cluster.pgpass)}
        proc = Proc(f"hazelcast-{port}", command, self.log_dir / f"hazelcast-{port}.log", env=env).start()
        self.members[port] = proc
        return proc

    def register(self, port: int) -> None:
        subprocess.run(
            [sys.executable, "-m", "stackctl", "register-hazelcast", str(port)],
            cwd=ROOT,
            env={**os.environ, "CONSUL_HTTP_ADDR": self.agent.addr},
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self, timeout: float = 90.0) -> HazelcastCluster:
        for jar in (DEFAULT_JAR, *STORE_JARS):
            if not jar.is_file():
                raise RuntimeError(f"no {jar.name} at {jar}: run ./scripts/install")
        self.seed_kv()
        for port in self.ports:
            self.start_member(port)
            self.register(port)
        self.wait_passing(timeout)
        return self

    def wait_passing(self, timeout: float = 90.0) -> None:
        """Until every member runs and passes its check in Consul."""
        client = self.agent.client()
        eventually(
            lambda: self._assert_passing(client),
            timeout,
            interval=0.5,
            what=f"{len(self.ports)} Hazelcast members passing",
        )

    def _assert_passing(self, client: consul.Consul) -> None:
        for proc in self.members.values():
            assert proc.alive(), f"{proc.name} exited:\n{proc.tail()}"
        _, entries = client.health.service(kvconfig.HAZELCAST_SERVICE, passing=True)
        assert len(entries) == len(self.ports), f"{len(entries)} members passing"
        if self.store is not None:
            # The log map loads from the database when it is first used, and the load is a write that
            # split-brain protection refuses on a member that is still alone: wait for the whole cluster.
            for proc in self.members.values():
                assert f"Members {{size:{len(self.ports)}," in proc.log_path.read_text(errors="replace"), (
                    f"{proc.name} has not seen the {len(self.ports)} members yet"
                )

    def stop(self) -> None:
        for proc in self.members.values():
            proc.stop()

    @classmethod
    def joined(
        cls, agent: ConsulAgent, log_dir: Path, cluster_name: str, members: dict[int, int], names: str
    ) -> HazelcastCluster:
        """The members another process started (port -> pid), seen from `agent`: its KV names this cluster and a
        map and queue of its own (`names` as a suffix), and it registers the members as that process did."""
        cluster = cls(agent, log_dir, size=0)
        cluster.ports, cluster.cluster_name = sorted(members), cluster_name
        cluster.members = {port: Adopted.of(f"hazelcast-{port}", pid, log_dir / f"hazelcast-{port}.log")
                           for port, pid in members.items()}  # fmt: skip
        cluster.map_name, cluster.queue_name = f"{MAP_NAME}-{names}", f"{QUEUE_NAME}-{names}"
        cluster.seed_kv()
        for port in cluster.ports:
            cluster.register(port)
        cluster.wait_passing()
        return cluster


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Adopted(Proc):
    """A process this one did not start (no Popen): known by its pid."""

    adopted_pid: int = 0

    @classmethod
    def of(cls, name: str, pid: int, log_path: Path) -> Adopted:
        proc = cls(name, [], log_path)
        proc.adopted_pid = pid
        return proc

    @property
    def pid(self) -> int:
        return self.adopted_pid

    def alive(self) -> bool:
        return pid_alive(self.adopted_pid)

    def wait(self, timeout: float) -> None:
        """Not a child: its exit is polled (a zombie whose parent has not reaped it counts as gone)."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.name, timeout)
            time.sleep(0.1)
