"""The message log: uuid -> message in a Hazelcast map, read back in acceptance order."""

from __future__ import annotations

import time
from typing import Protocol

from hazelcast.core import HazelcastJsonValue

from servicekit.hz import Hazelcast


class MessageLog(Protocol):
    @property
    def ready(self) -> bool: ...

    def add(self, message_id: str, msg: str) -> bool:
        """Store once by id; True when this call stored it, False when the id was already there."""

    def messages(self) -> list[str]:
        """Every message, oldest first."""


# An entry is one string: the acceptance time in nanoseconds, zero-padded to a fixed width, then the
# message. Sorting the strings sorts by time, and reading 10,000 of them back is a third faster than
# HazelcastJsonValue plus json.loads (docs/BENCHMARKS.md).
STAMP_DIGITS = 20


def encode(msg: str, stamp_ns: int) -> str:
    return f"{stamp_ns:0{STAMP_DIGITS}d}{msg}"


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


class HazelcastMessageLog:
    def __init__(self, hz: Hazelcast):
        self._hz = hz

    @property
    def ready(self) -> bool:
        return self._hz.connected

    def add(self, message_id: str, msg: str) -> bool:
        # The wall clock of the machine orders entries across instances; put_if_absent keeps the first
        # stamp, so a retried POST neither duplicates the message nor moves it.
        return self._hz.map().put_if_absent(message_id, encode(msg, time.time_ns())) is None

    def messages(self) -> list[str]:
        # One call for the whole map; the values come back in partition order.
        return ordered(self._hz.map().values())
