"""CPU accounting: the CPU time each component spends per request, around the runs that measure it."""

from __future__ import annotations

import resource
from collections.abc import Callable

import psutil

from bench import wrk
from bench.systems import System
from devstack import HazelcastCluster


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (gunicorn workers, the JVM's threads)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


class CpuAccount:
    """CPU milliseconds per request, by component, summed over the runs it measured. Runs are
    sequential, so the shared Hazelcast members and the load generator work for one target at a time."""

    def __init__(self):
        self.cpu: dict[str, dict[str, float]] = {}
        self.requests: dict[str, int] = {}

    def measure(self, target: str, groups: dict[str, list[int]], run: Callable[[], wrk.Result]) -> wrk.Result:
        before = {name: cpu_seconds(pids) for name, pids in groups.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run()
        # wrk is the only child reaped meanwhile: the services are reaped when the bench stops them.
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = self.cpu.setdefault(target, {})
        for name, pids in groups.items():
            spent[name] = spent.get(name, 0.0) + cpu_seconds(pids) - before[name]
        spent["wrk (load generator)"] = spent.get("wrk (load generator)", 0.0) + (
            after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        )
        self.requests[target] = self.requests.get(target, 0) + result.requests
        return result

    def per_request_ms(self) -> dict[str, dict[str, float]]:
        return {target: {name: seconds * 1000 / self.requests[target] for name, seconds in spent.items()}
                for target, spent in self.cpu.items()}  # fmt: skip


def system_groups(system: System, cluster: HazelcastCluster) -> dict[str, list[int]]:
    stack = system.stack
    return {
        "facade": [s.proc.pid for s in stack.facades],
        "logging_svc": [s.proc.pid for s in stack.logging],
        "messages_svc": [s.proc.pid for s in stack.messages],
        "hazelcast members": [p.pid for p in cluster.members.values()],
        "consul agent": [system.agent.proc.pid],
        # The postmaster and its backends (shared by every system on the cluster: the durable one writes).
        **({"postgresql": [cluster.store.proc.pid]} if cluster.store is not None and cluster.store.proc else {}),
    }
