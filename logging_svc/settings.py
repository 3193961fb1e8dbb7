"""logging_svc's settings: the fields every service has (servicekit.settings), and the log's capacity."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from servicekit import stack
from servicekit.settings import Settings, SettingsError, env_int

# The log's default capacity is this share of the heap the members have left when one of them is gone, halved
# for the backup copy: the rest is for the queue, an index, migrations after a member loss and the collector.
LOG_HEAP_SHARE = 0.5
_JAVA_SIZE = re.compile(r"([0-9]+)([kKmMgG]?)")


def java_size_bytes(raw: str) -> int:
    """A size in java's -Xmx form (1g, 512m, 65536k, 1048576) in bytes."""
    match = _JAVA_SIZE.fullmatch(raw.strip())
    if match is None:
        raise SettingsError(f"HAZELCAST_HEAP must look like 512m or 1g, got {raw!r}")
    return int(match[1]) * 1024 ** " kmg".index(match[2].lower() or " ")


def default_log_capacity_bytes(heap_bytes: int, members: int) -> int:
    """What the log may hold (one copy, in logging_svc.store.entry_cost bytes): LOG_HEAP_SHARE of the
    heaps of all the members but one, over the two copies of each entry. With three 1g members: 512 MiB,
    about 1,000,000 messages of 100 characters; with one member gone, the two left hold half their heap."""
    return int(LOG_HEAP_SHARE * heap_bytes * max(members - 1, 1) / 2)


def _default_log_capacity(env: Mapping[str, str] | None = None) -> int:
    # The members' count as ./scripts/up runs them: a shrunk stack's (scripts/lib.sh) holds less.
    members = stack.count("HAZELCAST", env)
    return default_log_capacity_bytes(java_size_bytes(stack.values()["HAZELCAST_HEAP"]), members)


@dataclass(frozen=True)
class LoggingSettings(Settings):
    # A message that would take the log past this many bytes (one copy, estimated per entry by
    # logging_svc.store.entry_cost) is refused (507); by default derived from the members' heaps.
    log_capacity_bytes: int = field(default_factory=lambda: _default_log_capacity())

    @classmethod
    def own_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        return {"log_capacity_bytes": env_int(env, "LOG_CAPACITY_BYTES", _default_log_capacity(env), minimum=1)}
