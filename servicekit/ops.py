"""Operator commands behind ./scripts/up, ./scripts/status and the test fixtures.

    python -m servicekit.ops seed-kv
    python -m servicekit.ops hazelcast-member --port 5701
    python -m servicekit.ops register-hazelcast 5701 5702 5703
    python -m servicekit.ops wait facade-service=1 logging-service=3 --timeout 120
    python -m servicekit.ops status
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

import consul

from . import kvconfig
from .consul_client import make_consul
from .registry import CONSUL_ERRORS
from .settings import Settings

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


def _settings() -> Settings:
    # Only the Consul address, token and timeout matter to these commands.
    return Settings.from_env("ops", 1)


def _client() -> consul.Consul:
    return make_consul(_settings())


def seed_kv(args: argparse.Namespace) -> int:
    written = kvconfig.seed(_client(), kvconfig.seed_values())
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
        log.error("Consul at %s does not answer: %s", _settings().consul.url, exc)
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m servicekit.ops")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("seed-kv", help="write consul/kv/ into Consul KV, keeping values already set").set_defaults(
        func=seed_kv
    )
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (kvconfig.ConfigError, *CONSUL_ERRORS) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
