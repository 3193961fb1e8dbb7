"""A Hazelcast member of the dev stack: its command line (JVM options, jar, member config) and its Consul
service definition.

The members are service definitions the Consul agent loads at start (./scripts/up renders
consul/hazelcast-member.json.tmpl into the run directory and starts the agent with -config-dir): a dev
agent forgets everything registered through its API when it restarts, not what its configuration holds.
`register` sends the same definitions through the API, for an agent this stack did not start.
"""

from __future__ import annotations

import json
import logging
import os
import string
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import consul

from servicekit import kvconfig, stack
from servicekit.discovery import usable_instances
from servicekit.settings import SettingsError, instance_id, service_host

from . import postgres

log = logging.getLogger(__name__)

MEMBER_CONFIG = stack.ROOT / "conf" / "hazelcast.xml"
DEFINITION_TEMPLATE = stack.ROOT / "consul" / "hazelcast-member.json.tmpl"
HAZELCAST_VERSION = stack.hazelcast_version()
# The jar ./scripts/install fetches into the repository's .tools/ (HAZELCAST_JAR, which lib.sh sets,
# wins when a member starts).
DEFAULT_JAR = stack.ROOT / ".tools" / stack.values()["HAZELCAST_JAR_IN_TOOLS"]
# The members' MapStore and QueueStore (hazelcast-store/) and the jars they run with (conf/stack.env).
STORE_JARS = [
    stack.ROOT / ".tools" / stack.values()[name]
    for name in (
        "STORE_JAR_IN_TOOLS",
        "POSTGRES_JDBC_JAR_IN_TOOLS",
        "SLF4J_API_JAR_IN_TOOLS",
        "SLF4J_JDK14_JAR_IN_TOOLS",
    )
]
# The serial collector and the C1 compiler only: three members share a 2-core machine with six gunicorn
# masters and their workers. The heap is a setting (heap()); the heap starts small and grows with the log.
JAVA_OPTS = ["-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
# Java 17 needs these opens for Hazelcast's optimised paths; without them it logs warnings at boot.
JAVA_MODULE_OPTS = [
    "--add-modules",
    "java.se",
    "--add-exports",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.management/sun.management=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
]


def member_property(name: str, config: Path = MEMBER_CONFIG) -> str:
    """A property the member configuration sets (`hazelcast.max.no.heartbeat.seconds`): what the clients'
    timeouts are chosen against (servicekit/hz.py) and the tests measure from."""
    for element in ET.parse(config).getroot().iter("{http://www.hazelcast.com/schema/config}property"):
        if element.get("name") == name and element.text is not None:
            return element.text.strip()
    raise KeyError(f"{config} sets no property {name!r}")


def heap() -> str:
    """A member's largest heap, java's -Xmx form (512m, 1g): conf/stack.env's HAZELCAST_HEAP, the one place
    it is set for ./scripts/up (the test clusters pass their own; the simulated hosts set the variable)."""
    return os.environ.get("HAZELCAST_HEAP") or stack.values()["HAZELCAST_HEAP"]


def join_list(client: consul.Consul) -> str:
    """Whom a starting member asks to join: the members usable in Consul (not critical), which on several hosts are the
    other hosts' members; the list in KV when none passes yet (the first members of a cluster)."""
    registered = usable_instances(client, kvconfig.HAZELCAST_SERVICE)
    if registered:
        return ",".join(sorted(f"{i.address}:{i.port}" for i in registered))
    return kvconfig.get_value(client, kvconfig.KEY_MEMBERS)


def member_properties(env: Mapping[str, str] | None = None) -> list[str]:
    """The member's settings from the environment, as Java system properties.

    HAZELCAST_MERGE_DELAY_SECONDS: how long after its start, then how often, a member looks for the other side
    of a split brain to merge with (hazelcast.merge.first.run.delay.seconds and .next.run.delay.seconds).
    Unset, Hazelcast's own defaults hold (300 s, then every 120 s): a real deployment keeps them; the
    simulated hosts and the tests set a few seconds, to see a heal within a test.

    HAZELCAST_PARTITION_GROUPS=host: partition groups by host address (conf/hazelcast.xml), for members on
    several hosts; unset, off, as every member of a single-host stack shares one address.
    """
    env = os.environ if env is None else env
    groups = env.get("HAZELCAST_PARTITION_GROUPS") or ""
    if groups not in ("", "host"):
        raise SettingsError(f"HAZELCAST_PARTITION_GROUPS must be 'host' or unset, got {groups!r}")
    properties = [f"-Dhz.partition.group.enabled={'true' if groups == 'host' else 'false'}"]
    raw = env.get("HAZELCAST_MERGE_DELAY_SECONDS")
    if raw:
        if not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
            raise SettingsError(
                f"HAZELCAST_MERGE_DELAY_SECONDS must be a whole number of seconds, at least 1, got {raw!r}"
            )
        properties += [
            f"-Dhazelcast.merge.first.run.delay.seconds={int(raw)}",
            f"-Dhazelcast.merge.next.run.delay.seconds={int(raw)}",
        ]
    return properties


def hazelcast_member_command(
    port: int,
    cluster_name: str,
    members: str,
    jar: Path,
    heap_size: str | None = None,
    host: str = "127.0.0.1",
    names: tuple[str, str] = ("messages-log", "messages-queue"),
    store: postgres.StoreSettings | None = None,
) -> list[str]:
    """`host` is the one address the member binds and announces (conf/hazelcast.xml's interface); `names` the
    log map's and the queue's, whose configurations write through to `store` (None: memory only)."""
    return [
        "java",
        f"-Xmx{heap_size or heap()}",
        *JAVA_OPTS,
        *JAVA_MODULE_OPTS,
        f"-Dhazelcast.config={MEMBER_CONFIG}",
        f"-Dhz.cluster.name={cluster_name}",
        f"-Dhz.port={port}",
        f"-Dhz.interface={host}",
        f"-Dhz.members={members}",
        "-Dhazelcast.phone.home.enabled=false",
        *member_properties(),
        f"-Dhz.log.map={names[0]}",
        f"-Dhz.queue={names[1]}",
        *(postgres.STORE_OFF if store is None else store.properties()),
        "-cp",
        os.pathsep.join(str(p) for p in (jar, *STORE_JARS)),
        "com.hazelcast.core.server.HazelcastMemberStarter",
    ]


def jar() -> Path:
    return Path(os.environ.get("HAZELCAST_JAR") or DEFAULT_JAR)


def store_mode(env: Mapping[str, str] | None = None) -> str:
    """HAZELCAST_STORE: `postgres` (the default: the log map and the queue write through to the database
    Consul names) or `off` (memory only, as before the store; what ./scripts/bench compares against)."""
    mode = (os.environ if env is None else env).get("HAZELCAST_STORE") or "postgres"
    if mode not in ("postgres", "off"):
        raise SettingsError(f"HAZELCAST_STORE must be 'postgres' or 'off', got {mode!r}")
    return mode


def exec_member(client: consul.Consul, port: int, pgpass: Path | None = None) -> int:
    """Replace this process with one member, its cluster name, join list and names read from Consul KV, and
    the database from Consul (unless HAZELCAST_STORE=off). `pgpass` is the password file the JDBC driver reads."""
    cluster_name = kvconfig.get_value(client, kvconfig.KEY_CLUSTER_NAME)
    members = join_list(client)
    names = (kvconfig.get_value(client, kvconfig.KEY_MAP), kvconfig.get_value(client, kvconfig.KEY_QUEUE))
    path = jar()
    if not path.is_file():
        log.error("no Hazelcast jar at %s: run ./scripts/install", path)
        return 1
    store = None
    if store_mode() == "postgres":
        if pgpass is None:
            raise SettingsError("the store needs the database's password file: pass --pgpass (or HAZELCAST_STORE=off)")
        store = postgres.store_settings(client, pgpass)
        os.environ["PGPASSFILE"] = str(pgpass)
        log.info("the log map %r and the queue %r write through to %s", *names, store.jdbc_url)
    host = service_host()
    command = hazelcast_member_command(port, cluster_name, members, path, host=host, names=names, store=store)
    log.info("starting Hazelcast member on %s:%d in cluster %r, joining %s", host, port, cluster_name, members)
    os.execvp(command[0], command)


def service_definitions(ports: list[int], address: str = "127.0.0.1", host: str | None = None) -> list[dict[str, Any]]:
    """One Consul service definition a member (config-file form), from consul/hazelcast-member.json.tmpl:
    registered, and checked, at the address the member binds (SERVICE_HOST); `host` names it in the id."""
    template = string.Template(DEFINITION_TEMPLATE.read_text())
    return [
        json.loads(
            template.substitute(
                id=instance_id(kvconfig.HAZELCAST_SERVICE, port, host),
                name=kvconfig.HAZELCAST_SERVICE,
                address=address,
                port=port,
                version=HAZELCAST_VERSION,
            )
        )
        for port in ports
    ]


def write_service_definitions(
    path: Path, ports: list[int], address: str = "127.0.0.1", host: str | None = None
) -> None:
    """The members as an agent config file; written whole (a rename), so an agent never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"services": service_definitions(ports, address, host)}, f, indent=1)
    os.replace(tmp, path)


def register(client: consul.Consul, ports: list[int]) -> None:
    """The same definitions through the agent's API, for an agent that does not load them from a file."""
    for service in service_definitions(ports):
        check = service["check"]
        host, _, port = check["tcp"].rpartition(":")
        client.agent.service.register(
            service["name"],
            service_id=service["id"],
            address=service["address"],
            port=service["port"],
            meta=service["meta"],
            check=consul.Check.tcp(
                host,
                int(port),
                interval=check["interval"],
                timeout=check["timeout"],
                deregister=check["deregister_critical_service_after"],
            ),
        )


def wait_members(client: consul.Consul, count: int, timeout: float) -> bool:
    """Until a client sees `count` members in the cluster KV names. ./scripts/up starts the services only then:
    the first client to use the log map starts its load from the database (EAGER), and a load that runs while
    members are still joining (partitions migrating) was seen never to finish."""
    import time

    import hazelcast

    config = kvconfig.load(client)
    hz = hazelcast.HazelcastClient(
        cluster_name=config.cluster_name, cluster_members=list(config.members), cluster_connect_timeout=timeout
    )
    try:
        deadline = time.monotonic() + timeout
        while len(hz.cluster_service.get_members()) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
        return True
    finally:
        hz.shutdown()
