"""What the stack is doing: each instance's health as Consul reports it (the status table, waiting until
every instance passes), whether a port is free and who holds it, and the processes of a supervisord that
died (orphans), which ./scripts/up and ./scripts/down stop.
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

from .errors import CONSUL_ERRORS

log = logging.getLogger(__name__)

# --- Health, as Consul reports it.


def aggregate_status(statuses: set[str]) -> str:
    """Consul's rule: the worst of an instance's checks is its health."""
    return next((s for s in ("critical", "warning") if s in statuses), "passing")


def service_health(client: consul.Consul) -> dict[str, list[tuple[str, str, str]]]:
    """service -> [(instance id, address:port, aggregate status)] from the agent's catalog."""
    _, services = client.catalog.services()
    table: dict[str, list[tuple[str, str, str]]] = {}
    for name in sorted(services):
        if name == "consul":
            continue
        _, entries = client.health.service(name)
        rows = []
        for entry in entries:
            statuses = {c["Status"] for c in entry["Checks"]}
            status = aggregate_status(statuses)
            svc = entry["Service"]
            rows.append((svc["ID"], f"{svc['Address'] or entry['Node']['Address']}:{svc['Port']}", status))
        table[name] = sorted(rows)
    return table


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
    """The pid of this run directory's supervisord, when it is alive."""
    try:
        pid = int((run_dir / "supervisord.pid").read_text().strip())
        alive = any("supervisord" in part for part in psutil.Process(pid).cmdline())
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def stack_processes(run_dir: Path) -> list:
    """Every live process a supervisord of this run directory started, workers included. supervisord
    writes its own socket into each program's environment (SUPERVISOR_SERVER_URL), and it outlives
    supervisord: this finds the programs of a supervisord that was killed, and nothing else."""
    socket_path = os.path.realpath(run_dir / "supervisord.sock")
    found = []
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
STOP_ORDER = (("services", signal.SIGTERM, 20.0), ("hazelcast", signal.SIGTERM, 25.0), ("consul", signal.SIGINT, 15.0))


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
            groups.setdefault(proc.environ().get("SUPERVISOR_GROUP_NAME", ""), []).append(proc)
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
                log.info("stopping %s, %s", proc.environ().get("SUPERVISOR_PROCESS_NAME", "?"), describe(proc.pid))
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
