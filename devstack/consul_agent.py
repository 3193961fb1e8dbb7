"""A Consul dev agent on free loopback ports, run by the consul ./scripts/up would run."""

from __future__ import annotations

import logging
import signal
import subprocess
import uuid
from pathlib import Path

import consul
import requests

from devstack.ports import free_port
from devstack.processes import ROOT, Proc, eventually
from stackctl.stack_status import aggregate_status

log = logging.getLogger(__name__)

# Consul 1.14 gives a dev agent (a server) a gRPC TLS port, 8503 unless told otherwise; older versions
# reject the flag.
GRPC_TLS_SINCE = (1, 14, 0)


def _lib_sh(function: str, *args: str) -> subprocess.CompletedProcess:
    """Run one function of scripts/lib.sh, so the dev stack applies the scripts' rules rather than a copy."""
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


def agent_port_flags(version: tuple[int, int, int], ports: dict[str, int]) -> list[str]:
    """Flags that put every listener a dev agent of this version opens on `ports` or switch it off, so
    two test agents, or a test agent and ./scripts/up's on the default ports, never collide."""
    flags = {**ports, "https": -1}
    if version >= GRPC_TLS_SINCE:
        flags["grpc-tls"] = -1
    return [f"-{flag}-port={port}" for flag, port in flags.items()]


class ConsulAgent:
    def __init__(self, log_dir: Path, name: str | None = None):
        """`name` names the log file; by default `consul-<http port>`, which no other agent of any worker has."""
        binary = consul_binary()
        self.http_port = free_port()
        name = name or f"consul-{self.http_port}"
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
        )  # fmt: skip

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def client(self, timeout: float = 15.0) -> consul.Consul:
        # Generous: beside other workers' stacks, an agent was seen to take more than 5 s over a join.
        return consul.Consul(host="127.0.0.1", port=self.http_port, connections_timeout=timeout)

    def start(self, timeout: float = 30.0) -> ConsulAgent:
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


def check_status(client: consul.Consul, instance_id: str) -> str | None:
    """The aggregate status of one instance's checks, or None when Consul does not know it."""
    _, entries = client.health.state("any")
    statuses = {e["Status"] for e in entries if e.get("ServiceID") == instance_id}
    if not statuses:
        return None
    return aggregate_status(statuses)


def prometheus_counter(agent: ConsulAgent, prefix: str | tuple[str, ...]) -> float:
    """The sum of the agent's cumulative `<prefix>*_count` samples (see telemetry in consul/agent.hcl);
    several prefixes are summed from one read."""
    text = requests.get(f"http://{agent.addr}/v1/agent/metrics?format=prometheus", timeout=5).text
    return summed_counts(text, prefix)


def summed_counts(text: str, prefix: str | tuple[str, ...]) -> float:
    """The sum of the `<prefix>*_count` samples in Prometheus text: the agent's timers are summaries, whose
    `_count` is how many times they ran."""
    # Imported here, as servicekit.metrics_files explains: the library picks its value store on first import.
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(prefix) and sample.name.endswith("_count")
    )
