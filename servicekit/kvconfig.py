"""Shared settings kept in Consul KV, and the seed data under consul/kv/."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import consul

from .discovery import usable_instances
from .errors import ConfigError

log = logging.getLogger(__name__)

KEY_CLUSTER_NAME = "config/hazelcast/cluster-name"
KEY_MEMBERS = "config/hazelcast/members"
KEY_MAP = "config/logging/map"
KEY_QUEUE = "config/messages/queue"
HAZELCAST_SERVICE = "hazelcast"

SEED_DIR = Path(__file__).resolve().parent.parent / "consul" / "kv"


@dataclass(frozen=True)
class SharedConfig:
    cluster_name: str
    members: tuple[str, ...]
    map_name: str
    queue_name: str


def seed_values(seed_dir: Path = SEED_DIR) -> dict[str, str]:
    """consul/kv/<key> holds the value of <key>, one file a key."""
    return {
        path.relative_to(seed_dir).as_posix(): path.read_text().strip()
        for path in sorted(seed_dir.rglob("*"))
        if path.is_file()
    }


def seed(client: consul.Consul, values: dict[str, str]) -> list[str]:
    """Write each key that is absent; cas=0 leaves a value a user changed alone. Returns the keys written."""
    written = []
    for key, value in values.items():
        if client.kv.put(key, value, cas=0):
            written.append(key)
    return written


def get_value(client: consul.Consul, key: str) -> str:
    _, entry = client.kv.get(key)
    if entry is None or not entry.get("Value"):
        raise ConfigError(f"Consul KV has no value at {key!r}: run ./scripts/up, which seeds it from consul/kv/")
    return entry["Value"].decode().strip()


def load(client: consul.Consul) -> SharedConfig:
    """Read the shared settings; the members are the usable (not critical) `hazelcast` instances when there are any."""
    registered = usable_instances(client, HAZELCAST_SERVICE)
    if registered:
        members = tuple(sorted(f"{i.address}:{i.port}" for i in registered))
    else:
        members = tuple(m.strip() for m in get_value(client, KEY_MEMBERS).split(",") if m.strip())
        log.info("no usable %r instance in Consul; using the members in KV", HAZELCAST_SERVICE)
    return SharedConfig(
        cluster_name=get_value(client, KEY_CLUSTER_NAME),
        members=members,
        map_name=get_value(client, KEY_MAP),
        queue_name=get_value(client, KEY_QUEUE),
    )
