"""The message log: uuid -> message in a Hazelcast map, read back in acceptance order, a page at a time.

The entry format (a stamp, then the message) is servicekit/log_entry.py."""

from __future__ import annotations

import time
from typing import Protocol

from hazelcast import predicate
from hazelcast.aggregator import min_
from hazelcast.core import HazelcastJsonValue

from servicekit.hz import Hazelcast
from servicekit.log_entry import STAMP_DIGITS, encode, message_of, stamp_bound, stamp_of
from servicekit.paging import LogCursor


class MessageLog(Protocol):
    @property
    def ready(self) -> bool: ...

    def add(self, message_id: str, msg: str) -> bool:
        """Store once by id; True when this call stored it, False when the id was already there."""

    def page(self, after: LogCursor | None, limit: int) -> tuple[list[str], LogCursor | None]:
        """Up to `limit` messages after `after` (from the oldest when None), oldest first, and the cursor
        of the next page: None when this page reached the newest message."""


def convert_json_entry(entry: str | HazelcastJsonValue) -> str:
    """An entry written as {"msg", "ts"} JSON before the string encoding, in today's stamped string form;
    a string entry as it is."""
    if isinstance(entry, HazelcastJsonValue):
        old = entry.loads()
        return encode(old["msg"], old["ts"])
    return entry


def cut_page(entries: list[str], after: LogCursor | None, limit: int) -> tuple[list[str], LogCursor | None]:
    """The page in `entries` (sorted, from the cursor's stamp on, at most limit + seen + 1 of them): the
    `seen` entries of the cursor's stamp the walk already returned are dropped, and one entry past the
    page says whether there is a next one."""
    if after is not None:
        already = 0
        while already < min(after.seen, len(entries)) and stamp_of(entries[already]) == after.stamp:
            already += 1
        entries = entries[already:]
    page = entries[:limit]
    if len(entries) <= limit:
        return [message_of(e) for e in page], None
    last = stamp_of(page[-1])
    seen = sum(1 for e in page if stamp_of(e) == last)
    if after is not None and last == after.stamp:
        seen += after.seen
    return [message_of(e) for e in page], LogCursor(last, seen)


# The log is read through a SORTED index on the entry (conf/hazelcast.xml), one window of stamps at a
# time: a paging predicate costs what its predicate matches, not what the page holds (an unbounded
# `greater(cursor)` over 1,000,000 entries took 1.2 s, a window holding the page 3-4 ms;
# docs/BENCHMARKS.md). The first window spans a second; then each worker sizes its windows to hold about
# twice a page, from the last full page it read. An empty or short window is followed by one
# WINDOW_GROWTH times wider, so a gap of two weeks is crossed in six steps; the window that would reach the
# present is left open at the top, so an entry stamped by a clock running ahead is still read.
FIRST_WINDOW_NS = 1_000_000_000
MIN_WINDOW_NS = 1_000_000
WINDOW_GROWTH = 16


def ordered(entries) -> list[str]:
    """The messages of `entries`, oldest first: the stamped strings sort by their stamp, which is then dropped."""
    return [entry[STAMP_DIGITS:] for entry in sorted(map(convert_json_entry, entries))]


class HazelcastMessageLog:
    def __init__(self, hz: Hazelcast):
        self._hz = hz
        # The oldest stamp this worker found: where the first page's window ends its first stretch.
        self._oldest: int | None = None
        self._width = FIRST_WINDOW_NS

    @property
    def ready(self) -> bool:
        return self._hz.connected

    def add(self, message_id: str, msg: str) -> bool:
        # The wall clock of the machine orders entries across instances; put_if_absent keeps the first
        # stamp, so a retried POST neither duplicates the message nor moves it.
        return self._hz.map().put_if_absent(message_id, encode(msg, time.time_ns())) is None

    def page(self, after: LogCursor | None, limit: int) -> tuple[list[str], LogCursor | None]:
        log_map = self._hz.map()
        start = after.stamp if after is not None else self._oldest_stamp(log_map)
        if start is None:
            return [], None
        want = limit + 1 + (after.seen if after is not None else 0)
        found: list[str] = []
        # A first page's window also takes in anything older than the oldest entry this worker found (a
        # write stamped before it that landed after it was read): an index lookup that matches nothing
        # when there is none.
        low, width = (start if after is not None else 0), self._width
        high = start + width
        now = time.time_ns()
        while len(found) < want:
            last = high >= now
            if last:
                window = predicate.greater_or_equal("this", stamp_bound(low))
            else:
                # between() includes its bounds, but no entry equals a bare stamp: the windows do not overlap.
                window = predicate.between("this", stamp_bound(low), stamp_bound(high))
            found.extend(sorted(log_map.values(predicate.paging(window, want - len(found)))))
            if last:
                break
            width *= WINDOW_GROWTH
            low, high = high, high + width
        if len(found) == want:
            self._width = max(2 * (stamp_of(found[-1]) - start), MIN_WINDOW_NS)
        if after is None and found:
            self._oldest = stamp_of(found[0])
        return cut_page(found, after, limit)

    def _oldest_stamp(self, log_map) -> int | None:
        if self._oldest is None:
            # A scan of the whole map, once per worker (and again while the map is empty).
            oldest = log_map.aggregate(min_("this"))
            self._oldest = None if oldest is None else stamp_of(oldest)
        return self._oldest
