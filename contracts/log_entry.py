"""The log's entry format: what logging_svc stores in the map, what a log cursor carries, what the bench fills.

An entry is one string: the acceptance time in nanoseconds, zero-padded to a fixed width, then the
message. Sorting the strings sorts by time, and reading 10,000 of them back is a third faster than
HazelcastJsonValue plus json.loads (docs/BENCHMARKS.md); a SORTED index on the entry reads a range of
stamps (logging_svc/store.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

STAMP_DIGITS = 20


def encode(msg: str, stamp_ns: int) -> str:
    return f"{stamp_ns:0{STAMP_DIGITS}d}{msg}"


def stamp_of(entry: str) -> int:
    return int(entry[:STAMP_DIGITS])


def message_of(entry: str) -> str:
    return entry[STAMP_DIGITS:]


def stamp_bound(stamp_ns: int) -> str:
    """The bare stamp: sorts before every entry with that stamp (a message is never empty) and after
    every entry with an earlier one."""
    return f"{stamp_ns:0{STAMP_DIGITS}d}"


class StampClock:
    """The acceptance stamps of one worker: the wall clock in nanoseconds, but never less than the last stamp
    plus one (the rule of a hybrid logical clock), so a clock that NTP steps back cannot make this worker stamp
    a later entry before an earlier one, nor two entries alike. Across hosts the stamps are only as close to
    real time as the hosts' clocks are to each other: docs/RELIABILITY.md, *Order across hosts*."""

    def __init__(self, wall: Callable[[], int] = time.time_ns):
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._wall(), self._last + 1)
            return self._last
