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


class HazelcastMessageLog:
    def __init__(self, hz: Hazelcast):
        self._hz = hz

    @property
    def ready(self) -> bool:
        return self._hz.connected

    def add(self, message_id: str, msg: str) -> bool:
        # The wall clock of the machine orders entries across instances; put_if_absent keeps the first
        # stamp, so a retried POST neither duplicates the message nor moves it.
        entry = HazelcastJsonValue({"msg": msg, "ts": time.time_ns()})
        return self._hz.map().put_if_absent(message_id, entry) is None

    def messages(self) -> list[str]:
        entries = [value.loads() for value in self._hz.map().values()]
        entries.sort(key=lambda e: e["ts"])
        return [e["msg"] for e in entries]
