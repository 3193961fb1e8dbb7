"""Operator commands behind ./scripts/up, ./scripts/status and the test fixtures.

    python -m servicekit.ops seed-kv
    python -m servicekit.ops hazelcast-member --port 5701
    python -m servicekit.ops register-hazelcast 5701 5702 5703
    python -m servicekit.ops wait facade-service=1 logging-service=3 --timeout 120
    python -m servicekit.ops status
    python -m servicekit.ops check-ports consul=8500 consul-dns=8600/udp logging-1=8081
    python -m servicekit.ops orphans --stop          # programs of a supervisord that died
    python -m servicekit.ops write-env run/programs.env
    python -m servicekit.ops --env-file run/programs.env exec gunicorn -c facade/gunicorn.conf.py
    python -m servicekit.ops stale-env               # services started with another Consul address or token
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import consul
import psutil

from . import kvconfig
from .consul_client import make_consul
from .errors import CONSUL_ERRORS
from .settings import ConsulAddress, ConsulSettings, SettingsError

log = logging.getLogger("servicekit.ops")

ROOT = Path(__file__).resolve().parent.parent
MEMBER_CONFIG = ROOT / "conf" / "hazelcast.xml"
HAZELCAST_VERSION = "5.5.0"
DEFAULT_JAR = ROOT / ".tools" / "hazelcast" / f"hazelcast-{HAZELCAST_VERSION}.jar"
# Small heaps: three members share a 2-core machine with six gunicorn masters and their workers.
JAVA_OPTS = ["-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
# Java 17 needs these opens for Hazelcast's optimised paths; without them it logs warnings at boot.
JAVA_MODULE_OPTS = [
    "--add-modules", "java.se",
    "--add-exports", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.management/sun.management=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
]


def _settings() -> ConsulSettings:
    return ConsulSettings.from_env()


def _client() -> consul.Consul:
    return make_consul(_settings())


def seed_kv(args: argparse.Namespace) -> int:
    values = kvconfig.seed_values()
    if args.members:
        values[kvconfig.KEY_MEMBERS] = args.members
    written = kvconfig.seed(_client(), values)
    log.info("KV seeded: %s", ", ".join(written) if written else "every key was already set")
    return 0


def hazelcast_member_command(port: int, cluster_name: str, members: str, jar: Path) -> list[str]:
    return [
        "java", *JAVA_OPTS, *JAVA_MODULE_OPTS,
        f"-Dhazelcast.config={MEMBER_CONFIG}",
        f"-Dhz.cluster.name={cluster_name}",
        f"-Dhz.port={port}",
        f"-Dhz.members={members}",
        "-Dhazelcast.phone.home.enabled=false",
        "-cp", str(jar),
        "com.hazelcast.core.server.HazelcastMemberStarter",
    ]


def hazelcast_member(args: argparse.Namespace) -> int:
    """Start one member with the cluster name and join list from Consul KV, replacing this process."""
    client = _client()
    cluster_name = kvconfig.get_value(client, kvconfig.KEY_CLUSTER_NAME)
    members = kvconfig.get_value(client, kvconfig.KEY_MEMBERS)
    jar = Path(os.environ.get("HAZELCAST_JAR") or DEFAULT_JAR)
    if not jar.is_file():
        log.error("no Hazelcast jar at %s: run ./scripts/install", jar)
        return 1
    command = hazelcast_member_command(args.port, cluster_name, members, jar)
    log.info("starting Hazelcast member on 127.0.0.1:%d in cluster %r", args.port, cluster_name)
    os.execvp(command[0], command)


def register_hazelcast(args: argparse.Namespace) -> int:
    client = _client()
    host = socket.gethostname()
    for port in args.ports:
        client.agent.service.register(
            kvconfig.HAZELCAST_SERVICE,
            service_id=f"{kvconfig.HAZELCAST_SERVICE}-{host}-{port}",
            address="127.0.0.1",
            port=port,
            meta={"version": HAZELCAST_VERSION},
            check=consul.Check.tcp("127.0.0.1", port, interval="2s", timeout="1s", deregister="1m"),
        )
    log.info("registered Hazelcast members on ports %s", ", ".join(map(str, args.ports)))
    return 0


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


def status(args: argparse.Namespace) -> int:
    try:
        table = service_health(_client())
    except CONSUL_ERRORS as exc:
        log.error("Consul at %s does not answer: %s", _settings().url, exc)
        return 1
    rows = [(name, *row) for name, entries in table.items() for row in entries]
    header = ("SERVICE", "INSTANCE", "ADDRESS", "HEALTH")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        sys.stdout.write("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")
    return 0


def wait(args: argparse.Namespace) -> int:
    """Wait until each named service has at least N instances, all passing; print progress as it goes."""
    expected = {}
    for spec in args.expect:
        name, _, count = spec.partition("=")
        expected[name] = int(count or 1)
    client = _client()
    deadline = time.monotonic() + args.timeout
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
            sys.stdout.write(f"  {line}\n")
            sys.stdout.flush()
            last = line
        if done:
            return 0
        if time.monotonic() > deadline:
            sys.stdout.write(f"  gave up after {args.timeout:.0f} s\n")
            return 1
        time.sleep(0.5)


def consul_addr(args: argparse.Namespace) -> int:
    """Print CONSUL_HTTP_ADDR as `scheme host port`, parsed the way every service parses it."""
    address = ConsulAddress.parse(os.environ.get("CONSUL_HTTP_ADDR") or "127.0.0.1:8500")
    sys.stdout.write(f"{address.scheme} {address.host} {address.port}\n")
    return 0


# What ./scripts/up hands to every program it starts, read at each start through --env-file:
# supervisord's own environment is frozen when it starts, and a later `up` may bring another token.
PROGRAM_ENV = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN")


def read_env_file(path: Path) -> dict[str, str | None]:
    """name -> value, or None for a variable that must be unset."""
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"no {path}: ./scripts/up writes it before it starts anything") from None
    return {name: values.get(name) for name in PROGRAM_ENV}


def write_env(args: argparse.Namespace) -> int:
    path = Path(args.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file readable by this user only (it holds the token); the rename makes it whole.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump({name: os.environ.get(name) or None for name in PROGRAM_ENV}, f)
    os.replace(tmp, path)
    return 0


def exec_command(args: argparse.Namespace) -> int:
    """Replace this process with the command, in the environment --env-file made."""
    if not args.command:
        raise SettingsError("exec needs a command")
    os.execvp(args.command[0], args.command)


@dataclass(frozen=True)
class PortUse:
    name: str
    port: int
    kind: int = socket.SOCK_STREAM

    @classmethod
    def parse(cls, spec: str) -> "PortUse":
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


def _describe(pid: int, width: int = 100) -> str:
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
        if c.pid and c.laddr and c.laddr.port == use.port
        and (use.kind == socket.SOCK_DGRAM or c.status == psutil.CONN_LISTEN)
    }
    return [_describe(pid) for pid in sorted(pids)]


def check_ports(args: argparse.Namespace) -> int:
    """Exit 1, naming each taken port and its holder, when any of the ports is taken."""
    taken = [use for use in map(PortUse.parse, args.ports) if not port_is_free(use)]
    for use in taken:
        holders = port_holders(use)
        if holders:
            log.error("port %s is taken by %s", use.label, ", ".join(holders))
        else:
            log.error("port %s is taken by a process this user cannot see (ss -ltnup 'sport = :%d' may name it)",
                      use.label, use.port)
    return 1 if taken else 0


def _run_dir() -> Path:
    return Path(os.environ.get("STACK_RUN_DIR") or ROOT / "run")


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
                log.info("stopping %s, %s", proc.environ().get("SUPERVISOR_PROCESS_NAME", "?"), _describe(proc.pid))
                proc.send_signal(sig)
            except psutil.Error:
                continue
        deadline = time.monotonic() + timeout
        while not all(map(_gone, members)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in members:
            if not _gone(proc):
                log.warning("killing %s: still running %.0f s after %s", _describe(proc.pid), timeout, sig.name)
                try:
                    proc.kill()
                except psutil.Error:
                    pass


def orphans(args: argparse.Namespace) -> int:
    found = orphan_processes(_run_dir())
    if not found:
        return 0
    if not args.stop:
        for proc in found:
            sys.stdout.write(f"{_describe(proc.pid)}\n")
        return 0
    log.info("stopping %d processes that a supervisord of %s started and no longer looks after",
             len(found), _run_dir())
    stop_processes(found)
    left = orphan_processes(_run_dir())
    if left:
        log.error("still running: %s", ", ".join(_describe(p.pid) for p in left))
        return 1
    return 0


def stale_env(args: argparse.Namespace) -> int:
    """Print the services (group:program) that run with another Consul address or token than the env
    file holds. Only services: a Hazelcast member uses the token once, to read KV at start, and
    restarting the members for it would lose the map and the queue; the agent does not use it."""
    wanted = read_env_file(Path(args.path))
    stale = set()
    for proc in stack_processes(_run_dir()):
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get("SUPERVISOR_GROUP_NAME") != "services":
            continue
        if any((env.get(name) or None) != value for name, value in wanted.items()):
            stale.add(f"services:{env.get('SUPERVISOR_PROCESS_NAME')}")
    for name in sorted(stale):
        sys.stdout.write(f"{name}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m servicekit.ops")
    parser.add_argument("--env-file", type=Path, help="set (or unset) the variables in this file first")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    seed = sub.add_parser("seed-kv", help="write consul/kv/ into Consul KV, keeping values already set")
    seed.add_argument("--members", help="the Hazelcast join list to seed instead of consul/kv's")
    seed.set_defaults(func=seed_kv)
    member = sub.add_parser("hazelcast-member", help="run one Hazelcast member configured from Consul KV")
    member.add_argument("--port", type=int, required=True)
    member.set_defaults(func=hazelcast_member)
    reg = sub.add_parser("register-hazelcast", help="register Hazelcast members with a TCP check")
    reg.add_argument("ports", type=int, nargs="+")
    reg.set_defaults(func=register_hazelcast)
    waiter = sub.add_parser("wait", help="wait until services have N passing instances")
    waiter.add_argument("expect", nargs="+", metavar="SERVICE=N")
    waiter.add_argument("--timeout", type=float, default=120.0)
    waiter.set_defaults(func=wait)
    sub.add_parser("status", help="a table of every instance and its health").set_defaults(func=status)
    sub.add_parser("consul-addr", help="print CONSUL_HTTP_ADDR as: scheme host port").set_defaults(func=consul_addr)
    ports = sub.add_parser("check-ports", help="fail, naming the holders, when any of the ports is taken")
    ports.add_argument("ports", nargs="+", metavar="NAME=PORT[/udp]")
    ports.set_defaults(func=check_ports)
    orphan = sub.add_parser("orphans", help="programs of this STACK_RUN_DIR that no live supervisord looks after")
    orphan.add_argument("--stop", action="store_true", help="stop them, services first")
    orphan.set_defaults(func=orphans)
    env_out = sub.add_parser("write-env", help="write the Consul address and token for the programs to read")
    env_out.add_argument("path")
    env_out.set_defaults(func=write_env)
    runner = sub.add_parser("exec", help="run a command in the environment --env-file made")
    runner.add_argument("command", nargs=argparse.REMAINDER)
    runner.set_defaults(func=exec_command)
    stale = sub.add_parser("stale-env", help="services started with another Consul address or token")
    stale.add_argument("path", help="the env file the services should run with")
    stale.set_defaults(func=stale_env)
    args = parser.parse_args(argv)
    try:
        if args.env_file:
            for name, value in read_env_file(args.env_file).items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return args.func(args)
    except (kvconfig.ConfigError, SettingsError, *CONSUL_ERRORS) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
