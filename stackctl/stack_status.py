"""What the stack is doing: each instance's health as Consul reports it (the status table, waiting until
every instance passes), each instance's share of the traffic from its own /metrics (`status --traffic`),
whether a port is free and who holds it, and the processes of a supervisord that died (orphans), which
./scripts/up and ./scripts/down stop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import consul
import psutil
import requests

from servicekit.discovery import service_address
from servicekit.errors import CONSUL_ERRORS
from servicekit.metrics_files import METRICS_PATH, metrics_url

log = logging.getLogger(__name__)

# --- Health, as Consul reports it.


def aggregate_status(statuses: set[str]) -> str:
    """Consul's rule: the worst of an instance's checks is its health."""
    return next((s for s in ("critical", "warning") if s in statuses), "passing")


def _health_entries(client: consul.Consul) -> dict[str, list[dict]]:
    """service -> the agent's health entries of its instances (every state), Consul's own service left out."""
    _, services = client.catalog.services()
    return {name: client.health.service(name)[1] for name in sorted(services) if name != "consul"}


def _address(entry: dict) -> str:
    return f"{service_address(entry)}:{entry['Service']['Port']}"


def _health(entry: dict) -> str:
    return aggregate_status({c["Status"] for c in entry["Checks"]})


def service_health(client: consul.Consul) -> dict[str, list[tuple[str, str, str]]]:
    """service -> [(instance id, address:port, aggregate status)] from the agent's catalog."""
    return {
        name: sorted((entry["Service"]["ID"], _address(entry), _health(entry)) for entry in entries)
        for name, entries in _health_entries(client).items()
    }


def status_table(table: dict[str, list[tuple[str, str, str]]]) -> list[str]:
    """The rows of ./scripts/status, in columns."""
    rows = [(name, *row) for name, entries in table.items() for row in entries]
    header = ("SERVICE", "INSTANCE", "ADDRESS", "HEALTH")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    return ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def wait_passing(
    client: consul.Consul, expected: Mapping[str, int], timeout: float, progress: Callable[[str], None]
) -> bool:
    """Wait until each named service has at least N instances, all passing; report progress as it changes."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            table = service_health(client)
        except CONSUL_ERRORS:
            table = {}
        parts = []
        done = True
        for name, count in expected.items():
            rows = table.get(name, [])
            passing = sum(1 for r in rows if r[2] == "passing")
            done &= passing >= count and passing == len(rows)
            parts.append(f"{name} {passing}/{count}")
        line = "passing: " + ", ".join(parts)
        if line != last:
            progress(line)
            last = line
        if done:
            return True
        if time.monotonic() > deadline:
            progress(f"gave up after {timeout:.0f} s")
            return False
        time.sleep(0.5)


# --- Traffic: each instance's requests, from its own /metrics, next to its health.

# Not traffic: Consul's health checks, and the scrapes of a revision that served /metrics on its public port
# (the bench's baselines); the metrics port counts nothing.
NOT_TRAFFIC = frozenset({"/health", METRICS_PATH})


@dataclass(frozen=True)
class Traffic:
    service: str
    instance: str
    address: str
    health: str
    # Requests served (since the instance started, or over the interval); None when the instance has no
    # metrics address in Consul (a Hazelcast member) or its /metrics did not answer.
    requests: float | None


def served_requests(text: str) -> float:
    """The requests an instance served, from its /metrics text: every route but NOT_TRAFFIC's."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_requests_total" and sample.labels.get("route") not in NOT_TRAFFIC
    )


def _served(entry: dict, timeout: float) -> float | None:
    url = metrics_url(entry["Service"], entry["Node"]["Address"])
    if url is None:
        return None
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        return served_requests(response.text)
    except (requests.RequestException, ValueError) as exc:
        log.warning("no metrics from %s: %s", entry["Service"]["ID"], exc)
        return None


def traffic(client: consul.Consul, interval: float = 0.0, timeout: float = 2.0) -> list[Traffic]:
    """Every instance Consul knows, with its health and the requests it served: since it started, or with
    `interval` (seconds) over that interval, read twice from each instance's metrics address (its meta)."""
    entries = _health_entries(client)
    first = {e["Service"]["ID"]: _served(e, timeout) for es in entries.values() for e in es} if interval else {}
    if interval:
        time.sleep(interval)
    rows = []
    for name, instances in entries.items():
        for entry in instances:
            served = _served(entry, timeout)
            if interval:
                before = first.get(entry["Service"]["ID"])
                served = None if served is None or before is None else max(served - before, 0.0)
            rows.append(Traffic(name, entry["Service"]["ID"], _address(entry), _health(entry), served))
    return sorted(rows, key=lambda row: (row.service, row.instance))


def traffic_table(rows: list[Traffic]) -> list[str]:
    """The rows of ./scripts/status --traffic: each instance's share of its service's requests."""
    totals: dict[str, float] = {}
    for row in rows:
        totals[row.service] = totals.get(row.service, 0.0) + (row.requests or 0.0)
    table = [("SERVICE", "INSTANCE", "ADDRESS", "HEALTH", "REQUESTS", "SHARE")]
    for row in rows:
        total = totals[row.service]
        count = "-" if row.requests is None else f"{row.requests:.0f}"
        share = "-" if row.requests is None or not total else f"{100 * row.requests / total:.0f}%"
        table.append((row.service, row.instance, row.address, row.health, count, share))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in table]


# --- Ports.


@dataclass(frozen=True)
class PortUse:
    name: str
    port: int
    kind: int = socket.SOCK_STREAM

    @classmethod
    def parse(cls, spec: str) -> PortUse:
        """`name=port` (TCP) or `name=port/udp`."""
        name, _, rest = spec.partition("=")
        port, _, proto = rest.partition("/")
        return cls(name, int(port), socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)

    @property
    def label(self) -> str:
        return f"{self.port}{'/udp' if self.kind == socket.SOCK_DGRAM else ''} ({self.name})"


def port_is_free(use: PortUse, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, use.kind) as s:
        if use.kind == socket.SOCK_STREAM:
            # As the servers bind: a port whose last connection is in TIME_WAIT is free to them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, use.port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def describe(pid: int, width: int = 100) -> str:
    try:
        proc = psutil.Process(pid)
        command = " ".join(" ".join(proc.cmdline()).split()) or proc.name()
    except psutil.Error:
        return f"pid {pid}"
    return f"pid {pid} ({command if len(command) <= width else command[: width - 3] + '...'})"


def port_holders(use: PortUse) -> list[str]:
    """The processes bound to the port, as `pid N (command)`; empty when this user cannot see them."""
    try:
        sockets = psutil.net_connections(kind="tcp" if use.kind == socket.SOCK_STREAM else "udp")
    except psutil.AccessDenied:
        return []
    pids = {
        c.pid
        for c in sockets
        if c.pid
        and c.laddr
        and c.laddr.port == use.port
        and (use.kind == socket.SOCK_DGRAM or c.status == psutil.CONN_LISTEN)
    }
    return [describe(pid) for pid in sorted(pids)]


# --- The processes of a supervisord, and its orphans.


def live_supervisord(run_dir: Path) -> int | None:
    """The pid of this run directory's supervisord, when it is alive. Its pid file outlives a supervisord
    killed with SIGKILL, and pids come round again within minutes on a busy machine: the process must be a
    supervisord started for this run directory (STACK_RUN_DIR in its environment), not any supervisord."""
    try:
        pid = int((run_dir / "supervisord.pid").read_text().strip())
        proc = psutil.Process(pid)
        ours = any("supervisord" in part for part in proc.cmdline()) and os.path.realpath(
            proc.environ().get("STACK_RUN_DIR", "")
        ) == os.path.realpath(run_dir)
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if ours else None


def _front_doors(run_dir: Path) -> list:
    """The nginx processes of the run directory's front doors (stackctl/front_door.py), master and workers.
    nginx writes its process title over its environment, so they are found by their pid files in the run
    directory instead, each checked against the master's command line (which names its configuration)."""
    found = []
    for pid_file in run_dir.glob("nginx-*/nginx.pid"):
        try:
            master = psutil.Process(int(pid_file.read_text().strip()))
            config = os.path.realpath(pid_file.parent / "nginx.conf")
            if config in master.cmdline() and master.status() != psutil.STATUS_ZOMBIE:
                found += [master, *master.children()]
        except (OSError, ValueError, psutil.Error):
            continue
    return found


def supervisor_names(proc) -> tuple[str, str]:
    """(group, process name) of a process supervisord started, as its environment says; for nginx, whose
    environment is gone (see _front_doors), ("nginx", the directory of its configuration: nginx-8080)."""
    env = proc.environ()
    if "SUPERVISOR_PROCESS_NAME" in env:
        return env.get("SUPERVISOR_GROUP_NAME", ""), env["SUPERVISOR_PROCESS_NAME"]
    master = proc if proc.cmdline()[:2] == ["nginx:", "master"] else proc.parent()
    args = master.cmdline() if master is not None else []
    config = args[args.index("-c") + 1] if "-c" in args[:-1] else ""
    return ("nginx", Path(config).parent.name) if config else ("", "")


def stack_processes(run_dir: Path) -> list:
    """Every live process a supervisord of this run directory started, workers included. supervisord
    writes its own socket into each program's environment (SUPERVISOR_SERVER_URL), and it outlives
    supervisord: this finds the programs of a supervisord that was killed, and nothing else (nginx by its
    pid file, see _front_doors)."""
    socket_path = os.path.realpath(run_dir / "supervisord.sock")
    found = _front_doors(run_dir)
    for proc in psutil.process_iter():
        try:
            url = proc.environ().get("SUPERVISOR_SERVER_URL", "")
            if (
                url.startswith("unix://")
                and os.path.realpath(url.removeprefix("unix://")) == socket_path
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def orphan_processes(run_dir: Path) -> list:
    """The stack's processes that no live supervisord of this run directory looks after."""
    keeper = live_supervisord(run_dir)
    orphans = []
    for proc in stack_processes(run_dir):
        try:
            if keeper is None or keeper not in {p.pid for p in proc.parents()}:
                orphans.append(proc)
        except psutil.Error:
            continue
    return orphans


# Orphans stop in the order ./scripts/down uses (services leave a Consul that still answers), with
# each program's stop signal and a little more than its stopwaitsecs in scripts/supervisord.conf.
# PostgreSQL after the members that write to it; SIGINT is its fast shutdown (SIGTERM waits for every client).
STOP_ORDER = (
    ("services", signal.SIGTERM, 20.0),
    ("nginx", signal.SIGQUIT, 15.0),
    ("hazelcast", signal.SIGTERM, 25.0),
    ("postgres", signal.SIGINT, 30.0),
    ("consul", signal.SIGINT, 15.0),
)


def _gone(proc) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_processes(procs: list) -> None:
    """Stop each program's first process with its signal, wait, then kill what is left."""
    groups: dict[str, list] = {}
    for proc in procs:
        try:
            groups.setdefault(supervisor_names(proc)[0], []).append(proc)
        except psutil.Error:
            continue
    known = {name for name, _, _ in STOP_ORDER}
    order = [*STOP_ORDER, *((name, signal.SIGTERM, 15.0) for name in sorted(set(groups) - known))]
    for group, sig, timeout in order:
        members = groups.get(group, [])
        pids = {p.pid for p in members}
        for proc in members:
            try:
                if proc.ppid() in pids:
                    continue  # a gunicorn worker: its master stops it
                log.info("stopping %s, %s", supervisor_names(proc)[1] or "?", describe(proc.pid))
                proc.send_signal(sig)
            except psutil.Error:
                continue
        deadline = time.monotonic() + timeout
        while not all(map(_gone, members)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in members:
            if not _gone(proc):
                log.warning("killing %s: still running %.0f s after %s", describe(proc.pid), timeout, sig.name)
                with contextlib.suppress(psutil.Error):
                    proc.kill()
