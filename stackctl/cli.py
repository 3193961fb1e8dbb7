"""The operator commands behind ./scripts/up, ./scripts/down, ./scripts/status and the test fixtures: a thin
command line over stackctl.hazelcast_member (the members) and stackctl.stack_status (health, ports,
orphans).

    python -m stackctl seed-kv
    python -m stackctl hazelcast-member --port 5701
    python -m stackctl hazelcast-services run/consul.d/hazelcast.json 5701 5702 5703
    python -m stackctl register-hazelcast 5701 5702 5703   # through the API, for an agent up did not start
    python -m stackctl wait facade-service=1 logging-service=3 --timeout 120
    python -m stackctl status
    python -m stackctl status --traffic [--interval 5]   # each instance's share of the requests
    python -m stackctl check-ports consul=8500 consul-dns=8600/udp logging-8081=8081
    python -m stackctl orphans --stop          # programs of a supervisord that died
    python -m stackctl write-env run/programs.env
    python -m stackctl --env-file run/programs.env exec gunicorn -c facade/gunicorn.conf.py
    python -m stackctl stale-env               # services started with another Consul address or token
    python -m stackctl drain logging-service-myhost-8081 "disk swap"   # Consul maintenance mode
    python -m stackctl undrain logging-service-myhost-8081
    python -m stackctl postgres-init --home run/postgres --port 5433    # initdb once (stackctl.postgres)
    python -m stackctl postgres-setup --home run/postgres --port 5433   # role, database, migrations
    python -m stackctl front-door --port 8080 --home run/nginx-8080                  # nginx before the facade
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import consul
import psutil

from servicekit import kvconfig, stack
from servicekit.consul_client import make_consul
from servicekit.errors import CONSUL_ERRORS
from servicekit.private_files import write_private
from servicekit.settings import ConsulAddress, ConsulSettings, SettingsError

from . import front_door, hazelcast_member, maintenance, postgres
from .stack_status import (
    PortUse,
    describe,
    orphan_processes,
    port_holders,
    port_is_free,
    service_health,
    stack_processes,
    status_table,
    stop_processes,
    traffic,
    traffic_table,
    wait_passing,
)

log = logging.getLogger("stackctl")


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


def hazelcast_member_cmd(args: argparse.Namespace) -> int:
    """Start one member with the cluster name and join list from Consul KV, replacing this process."""
    return hazelcast_member.exec_member(_client(), args.port, args.pgpass)


def hazelcast_services(args: argparse.Namespace) -> int:
    hazelcast_member.write_service_definitions(Path(args.path), args.ports)
    return 0


def hazelcast_members(args: argparse.Namespace) -> int:
    if hazelcast_member.wait_members(_client(), args.count, args.timeout):
        return 0
    log.error("the Hazelcast cluster did not reach %d members within %.0f s", args.count, args.timeout)
    return 1


def register_hazelcast(args: argparse.Namespace) -> int:
    hazelcast_member.register(_client(), args.ports)
    log.info("registered Hazelcast members on ports %s", ", ".join(map(str, args.ports)))
    return 0


def status(args: argparse.Namespace) -> int:
    try:
        if args.traffic:
            lines = traffic_table(traffic(_client(), interval=args.interval))
        else:
            lines = status_table(service_health(_client()))
    except CONSUL_ERRORS as exc:
        log.error("Consul at %s does not answer: %s", _settings().url, exc)
        return 1
    for line in lines:
        sys.stdout.write(line + "\n")
    return 0


def wait(args: argparse.Namespace) -> int:
    """Wait until each named service has at least N instances, all passing; print progress as it goes."""
    expected = {}
    for spec in args.expect:
        name, _, count = spec.partition("=")
        expected[name] = int(count or 1)

    def progress(line: str) -> None:
        sys.stdout.write(f"  {line}\n")
        sys.stdout.flush()

    return 0 if wait_passing(_client(), expected, args.timeout, progress) else 1


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
    # It holds the token: readable by this user only, from the start.
    write_private(path, json.dumps({name: os.environ.get(name) or None for name in PROGRAM_ENV}))
    return 0


def exec_command(args: argparse.Namespace) -> int:
    """Replace this process with the command, in the environment --env-file made."""
    if not args.command:
        raise SettingsError("exec needs a command")
    os.execvp(args.command[0], args.command)


def check_ports(args: argparse.Namespace) -> int:
    """Exit 1, naming each taken port and its holder, when any of the ports is taken."""
    taken = [use for use in map(PortUse.parse, args.ports) if not port_is_free(use)]
    for use in taken:
        holders = port_holders(use)
        if holders:
            log.error("port %s is taken by %s", use.label, ", ".join(holders))
        else:
            log.error(
                "port %s is taken by a process this user cannot see (ss -ltnup 'sport = :%d' may name it)",
                use.label,
                use.port,
            )
    return 1 if taken else 0


def orphans(args: argparse.Namespace) -> int:
    found = orphan_processes(stack.run_dir())
    if not found:
        return 0
    if not args.stop:
        for proc in found:
            sys.stdout.write(f"{describe(proc.pid)}\n")
        return 0
    log.info(
        "stopping %d processes that a supervisord of %s started and no longer looks after", len(found), stack.run_dir()
    )
    stop_processes(found)
    left = orphan_processes(stack.run_dir())
    if left:
        log.error("still running: %s", ", ".join(describe(p.pid) for p in left))
        return 1
    return 0


def stale_env(args: argparse.Namespace) -> int:
    """Print the services (group:program) that run with another Consul address or token than the env
    file holds. Only services: a Hazelcast member uses the token once, to read KV at start, and
    restarting the members for it would lose the map and the queue; the agent does not use it."""
    wanted = read_env_file(Path(args.path))
    stale = set()
    for proc in stack_processes(stack.run_dir()):
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


def drain(args: argparse.Namespace) -> int:
    reason = maintenance.drain(_client(), args.instance, " ".join(args.reason) or None)
    log.info(
        "%s is in maintenance (%s): out of every facade's rotation, still serving direct calls", args.instance, reason
    )
    return 0


def undrain(args: argparse.Namespace) -> int:
    maintenance.undrain(_client(), args.instance)
    log.info("%s is out of maintenance: back in rotation once its check passes", args.instance)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m stackctl")
    parser.add_argument("--env-file", type=Path, help="set (or unset) the variables in this file first")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    seed = sub.add_parser("seed-kv", help="write consul/kv/ into Consul KV, keeping values already set")
    seed.add_argument("--members", help="the Hazelcast join list to seed instead of consul/kv's")
    seed.set_defaults(func=seed_kv)
    member = sub.add_parser("hazelcast-member", help="run one Hazelcast member configured from Consul KV")
    member.add_argument("--port", type=int, required=True)
    member.add_argument("--pgpass", type=Path, help="the database's password file (stackctl/postgres.py)")
    member.set_defaults(func=hazelcast_member_cmd)
    defs = sub.add_parser("hazelcast-services", help="write the members as a Consul agent config file")
    defs.add_argument("path")
    defs.add_argument("ports", type=int, nargs="+")
    defs.set_defaults(func=hazelcast_services)
    joined = sub.add_parser("hazelcast-members", help="wait until the cluster has COUNT members")
    joined.add_argument("count", type=int)
    joined.add_argument("--timeout", type=float, default=120.0)
    joined.set_defaults(func=hazelcast_members)
    reg = sub.add_parser("register-hazelcast", help="register Hazelcast members with a TCP check")
    reg.add_argument("ports", type=int, nargs="+")
    reg.set_defaults(func=register_hazelcast)
    waiter = sub.add_parser("wait", help="wait until services have N passing instances")
    waiter.add_argument("expect", nargs="+", metavar="SERVICE=N")
    waiter.add_argument("--timeout", type=float, default=120.0)
    waiter.set_defaults(func=wait)
    stat = sub.add_parser("status", help="a table of every instance and its health")
    stat.add_argument(
        "--traffic", action="store_true", help="add each instance's requests and share, from its /metrics"
    )
    stat.add_argument(
        "--interval", type=float, default=0.0, metavar="SECONDS", help="with --traffic: over SECONDS, not since start"
    )
    stat.set_defaults(func=status)
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
    drainer = sub.add_parser("drain", help="put an instance in Consul maintenance mode, out of every rotation")
    drainer.add_argument("instance", help="the instance id, as ./scripts/status lists it")
    drainer.add_argument("reason", nargs="*", help="shown in Consul (the maintenance check's Notes)")
    drainer.set_defaults(func=drain)
    undrainer = sub.add_parser("undrain", help="take an instance out of maintenance mode")
    undrainer.add_argument("instance")
    undrainer.set_defaults(func=undrain)
    postgres.add_commands(sub, _client)
    front_door.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        if args.env_file:
            for name, value in read_env_file(args.env_file).items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return args.func(args)
    except (kvconfig.ConfigError, SettingsError, maintenance.NotHere, postgres.MigrationError, *CONSUL_ERRORS) as exc:
        log.error("%s", exc)
        return 1
