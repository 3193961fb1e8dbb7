"""The message log: uuid -> message in a Hazelcast map, read back in acceptance order."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from hazelcast.core import HazelcastJsonValue

from servicekit.hz import Hazelcast
from servicekit.web import InsufficientStorage

log = logging.getLogger(__name__)


class LogFull(InsufficientStorage):
    """The log is at its capacity (LOG_CAPACITY_BYTES): nothing was stored."""

    def __init__(self, detail: str):
        super().__init__("the log is full", detail)


class MessageLog(Protocol):
    @property
    def ready(self) -> bool: ...

    def add(self, message_id: str, msg: str) -> bool:
        """Store once by id; True when this call stored it, False when the id was already there. LogFull,
        storing nothing, when the message would take the log past its capacity."""

    def messages(self) -> list[str]:
        """Every message, oldest first."""

    def status(self) -> dict:
        """What /health shows of the log: its size and capacity, as last seen (no cluster call)."""


# An entry is one string: the acceptance time in nanoseconds, zero-padded to a fixed width, then the
# message. Sorting the strings sorts by time, and reading 10,000 of them back is a third faster than
# HazelcastJsonValue plus json.loads (docs/BENCHMARKS.md).
STAMP_DIGITS = 20


def encode(msg: str, stamp_ns: int) -> str:
    return f"{stamp_ns:0{STAMP_DIGITS}d}{msg}"


# What one copy of an entry takes in a member's heap beyond its key and value, and what it takes per byte of
# them (the record, the serialized key and value, the partition's hash table). Fitted to a measurement
# (three 5.5 members, one backup, put_all, jcmd GC.heap_info after a full GC): 322 bytes a copy for a
# message of 100 characters, 4,472 for one of 4,000; the estimate is a little above both.
ENTRY_OVERHEAD = 160


def entry_cost(message_id: str, entry: str) -> int:
    """The estimated heap one copy of an entry takes, in bytes: what the log's capacity counts."""
    stored = len(message_id.encode()) + len(entry.encode())
    return ENTRY_OVERHEAD + stored + stored // 15


def convert_json_entry(entry: str | HazelcastJsonValue) -> str:
    """An entry written as {"msg", "ts"} JSON before the string encoding, in today's stamped string form;
    a string entry as it is."""
    if isinstance(entry, HazelcastJsonValue):
        old = entry.loads()
        return encode(old["msg"], old["ts"])
    return entry


def ordered(entries) -> list[str]:
    """The messages of `entries`, oldest first: the stamped strings sort by their stamp, which is then dropped."""
    return [entry[STAMP_DIGITS:] for entry in sorted(map(convert_json_entry, entries))]


# How long a logging worker trusts the log size it last read from the cluster; in between it adds what it
# stored itself. What the other instances stored in that time can go past the capacity: at the stack's
# POST rate, a few MB at most, inside the heap the capacity leaves free (servicekit.settings.LOG_HEAP_SHARE).
SIZE_REFRESH = 0.5


class LogSize:
    """The log's size in entry_cost bytes, for the whole cluster: a PN counter beside the map.

    Reading map.size() on every POST would be a call to every member; the counter is one read per worker
    every SIZE_REFRESH, and one increment per stored message that the POST does not wait for. The log never
    shrinks, so the size seen only grows: a read from a replica that has not seen an increment yet does not
    take back what this worker counted. A member lost with an increment in flight under-counts by one entry.
    """

    def __init__(self, hz: Hazelcast):
        self._hz = hz
        self._lock = threading.Lock()
        self._bytes = 0
        self._read_at = float("-inf")

    @property
    def seen(self) -> int:
        """The size last seen, without asking the cluster."""
        return self._bytes

    def bytes(self) -> int:
        if time.monotonic() - self._read_at >= SIZE_REFRESH:
            self._seen(self._hz.log_size_counter().get().result())
            self._read_at = time.monotonic()
        return self._bytes

    def grew(self, cost: int) -> None:
        with self._lock:
            self._bytes += cost
        self._hz.log_size_counter().add_and_get(cost).add_done_callback(self._added)

    def _added(self, future) -> None:
        try:
            self._seen(future.result())
        except Exception as exc:  # noqa: BLE001 - a callback on the client's thread: log, never raise
            log.warning("counting a stored message in the log size failed: %s", exc)

    def _seen(self, value: int) -> None:
        with self._lock:
            self._bytes = max(self._bytes, value)


class HazelcastMessageLog:
    def __init__(self, hz: Hazelcast, capacity_bytes: int):
        self._hz = hz
        self.capacity_bytes = capacity_bytes
        self.size = LogSize(hz)

    @property
    def ready(self) -> bool:
        return self._hz.connected

    def add(self, message_id: str, msg: str) -> bool:
        # The wall clock of the machine orders entries across instances; put_if_absent keeps the first
        # stamp, so a retried POST neither duplicates the message nor moves it.
        entry = encode(msg, time.time_ns())
        cost = entry_cost(message_id, entry)
        held = self.size.bytes()
        if held + cost > self.capacity_bytes:
            raise LogFull(f"the log holds {held} of {self.capacity_bytes} bytes; {message_id} needs {cost}")
        created = self._hz.map().put_if_absent(message_id, entry) is None
        if created:
            self.size.grew(cost)
        return created

    def status(self) -> dict:
        """For /health: the size last seen (not read from the cluster: a health check must stay cheap)."""
        return {"bytes": self.size.seen, "capacity_bytes": self.capacity_bytes}

    def messages(self) -> list[str]:
        # One call for the whole map; the values come back in partition order.
        return ordered(self._hz.map().values())
