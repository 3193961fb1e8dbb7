"""The message log: uuid -> message in a Hazelcast map, read back in acceptance order, a page at a time.

The entry format (a stamp, then the message) is contracts/log_entry.py."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from hazelcast import predicate
from hazelcast.aggregator import long_sum, min_
from hazelcast.core import HazelcastJsonValue
from hazelcast.errors import HazelcastError, SplitBrainProtectionError
from werkzeug.exceptions import Conflict

from contracts.log_entry import STAMP_DIGITS, StampClock, encode, message_of, stamp_bound, stamp_of
from contracts.paging import LogCursor
from servicekit import metrics
from servicekit.background import BackgroundLoop
from servicekit.errors import HazelcastUnavailable, InsufficientStorage, StoreFailure, Unavailable, store_failure
from servicekit.hz import INVOCATION_TIMEOUT, Bounded, Hazelcast, Structures, wait
from servicekit.kvconfig import SharedConfig

log = logging.getLogger(__name__)


class LogFull(InsufficientStorage):
    """The log is at its capacity (LOG_CAPACITY_BYTES): nothing was stored."""

    def __init__(self, detail: str):
        super().__init__("the log is full", detail)


class WritesRefused(Unavailable):
    """The member that owns the entry sees fewer members than split-brain protection asks (conf/hazelcast.xml):
    it refused the write before doing it. The 503 says `"stored": false`, so the facade knows the message is
    not logged (not merely "not known") and may try an instance that reaches the larger side of a split."""

    def __init__(self, detail: str):
        super().__init__(
            "the Hazelcast cluster has too few members to accept writes: nothing was stored", detail, stored=False
        )


class AnotherMessageStored(Conflict):
    """The id already holds another message: nothing was stored, and the entry is left as it is.

    409, not the 200 "already stored" of a retry: that would tell the caller its message is in the log when
    another one is (the facade derives ids from Idempotency-Keys, so a key reused with another message meets
    here once its kept answer is gone). The answer does not show the stored message: an id made from a key
    is only as secret as the key, and the caller that sent the first message has it."""

    def __init__(self, message_id: str):
        super().__init__(f"another message is already stored under id {message_id}: nothing was stored")


class StoreUnavailable(Unavailable):
    """The member that owns the entry could not write it through to PostgreSQL (hazelcast-store/): no
    connection, or the database refused the statement. Nothing was stored, in the database or in memory,
    and the 503 says `"stored": false`; every instance shares the database, so the facade answers 503 too."""

    def __init__(self, detail: str):
        super().__init__("the log's database (PostgreSQL) is unavailable: nothing was stored", detail, stored=False)


class MessageLog(Protocol):
    @property
    def ready(self) -> bool: ...

    def add(self, message_id: str, msg: str) -> bool:
        """Store once by id; True when this call stored it, False when the id already held this message.
        AnotherMessageStored when it held another one; LogFull, storing nothing, when the message would
        take the log past its capacity."""

    def page(self, after: LogCursor | None, limit: int) -> tuple[list[str], LogCursor | None]:
        """Up to `limit` messages after `after` (from the oldest when None), oldest first, and the cursor
        of the next page: None when this page reached the newest message."""

    def status(self) -> dict:
        """What /health shows of the log: its size and capacity, as last seen (no cluster call)."""


# What one copy of an entry takes in a member's heap beyond its key and value, and what it takes per byte of
# them (the record, the serialized key and value, the partition's hash table, and, on the owner, the
# SORTED index's deserialized copy of the value). Fitted to a measurement (three 5.5 members, one backup,
# the index of conf/hazelcast.xml, put_all, jcmd GC.heap_info after a full GC): 526 bytes a copy for a
# message of 100 characters, 6,547 for one of 4,000 (without the index: 322 and 4,472); the estimate is a
# little above both. The members compute the same (hazelcast-store's EntryCost, the map's entry_cost attribute)
# to rebuild the log's size: change both together.
ENTRY_OVERHEAD = 290


def entry_cost(message_id: str, entry: str) -> int:
    """The estimated heap one copy of an entry takes, in bytes: what the log's capacity counts."""
    return entry_cost_of_size(len(message_id.encode()) + len(entry.encode()))


def entry_cost_of_size(stored: int) -> int:
    """entry_cost of an entry whose key and value take `stored` bytes."""
    return ENTRY_OVERHEAD + stored + stored // 2 + stored // 20


# Every key is a canonical UUID (logging_svc.routes refuses any other spelling).
ID_BYTES = 36


def convert_json_entry(entry: str | HazelcastJsonValue) -> str:
    """An entry written as {"msg", "ts"} JSON before the string encoding, in today's stamped string form;
    a string entry as it is."""
    if isinstance(entry, HazelcastJsonValue):
        old = entry.loads()
        return encode(old["msg"], old["ts"])
    return entry


def cut_page(entries: list[str], after: LogCursor | None, limit: int) -> tuple[list[str], LogCursor | None]:
    """The page in `entries` (sorted, from the cursor's stamp on: the entries of that stamp, then up to
    limit + 1 more): the `seen` entries of the cursor's stamp the walk already returned are dropped, and
    one entry past the page says whether there is a next one."""
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


# How often a logging worker sends what it stored to the cluster's count and reads the count back; in
# between it adds what it stored itself. What the other workers stored in that time (plus the counter's
# replication, crdt-replication in conf/hazelcast.xml) can go past the capacity: under the flood test a few
# hundred KB, inside the heap the capacity leaves free (logging_svc.settings.LOG_HEAP_SHARE).
SIZE_REFRESH = 0.25
# While nothing moves (this worker stored nothing, the total did not change), the wait doubles up to this: at
# SIZE_REFRESH, the six logging workers of an idle ./scripts/up stack made 24 calls a second to its members.
# The first entry this worker stores after an idle spell wakes the loop at once; what the others store is
# seen within this time of their first sync.
SIZE_IDLE_REFRESH = 2.0


# The log's structures, named after its map in Consul KV (config/logging/map).
def size_counter_name(shared: SharedConfig) -> str:
    return f"{shared.map_name}-bytes"


def structures(shared: SharedConfig) -> Structures:
    """What the service's client makes once connected; the rebuild marker is made by its first use (LogSize.load,
    on its own thread)."""
    return Structures(maps=(shared.map_name,), pn_counters=(size_counter_name(shared),))


def log_map_of(hz: Hazelcast) -> Bounded:
    return hz.get_map(hz.shared_config().map_name)


class LogSize:
    """The log's size in entry_cost bytes, for the whole cluster: a PN counter beside the map.

    map.size() on every POST would be a call to every member, and an increment per POST cost 10 % of the
    stack's CPU per POST (./scripts/bench: 4.54 against 4.14 ms). Instead each worker adds up what it stored
    and a background thread, every SIZE_REFRESH (less often while nothing moves: SIZE_IDLE_REFRESH), sends
    the sum and reads the total in one call (add_and_get): a POST makes no call for it. The log never
    shrinks, so the size seen only grows: a replica that has not seen an increment yet does not take back what
    this worker counted. A worker killed with a sum not sent yet under-counts by at most SIZE_REFRESH of its
    POSTs.

    The counter lives in the members' memory only, while the map is loaded from PostgreSQL when the whole
    cluster starts again: the first worker to claim the marker beside the counter then adds what the map holds
    and the counter does not (rebuild). A worker is ready (/health) once the map answered it, that is once the
    members finished loading it.
    """

    def __init__(self, hz: Hazelcast):
        self._hz = hz
        self._lock = threading.Lock()
        self._bytes = 0
        self._unsent = 0
        self._synced = threading.Event()
        self._loaded = threading.Event()
        self._stored = threading.Event()  # ends an idle wait: something to send
        self._refresh = SIZE_REFRESH
        self._last_total: int | None = None
        self._loop = BackgroundLoop("log-size", self._sync_step)

    def start(self) -> LogSize:
        self._loop.start()
        return self

    @property
    def seen(self) -> int:
        """The size last seen, without asking the cluster."""
        return self._bytes

    @property
    def loaded(self) -> bool:
        """Whether the map answered this worker: the members have loaded it from the database."""
        return self._loaded.is_set()

    def load(self) -> None:
        """Wait for the map to be loaded (its size and a query wait for it) and, when this worker is the first
        of the cluster to claim the rebuild, bring the counter up to what the map holds: the members add up
        every entry's cost (the entry_cost attribute) and answer one number.

        Both calls wait however long (this thread holds no request): loading a million entries takes the
        members about 30 s, and a call given up on after the request timeout was sent again every SIZE_REFRESH,
        each one a scan of the whole map on the members, which then never finished loading and answering
        (issue 17: a stack with 1,000,000 messages never passed after `up`).

        The counter becomes max(what it counted before the query, what the map holds): the entries stored
        since the restart are in both, so they count once, and a second rebuild (the marker's partition lost
        with two members while the counter lived on) adds nothing. An entry stored while the query runs may
        count twice: a few KB, conservative."""
        marker = self._marker()
        log_map = log_map_of(self._hz).blocking()
        if marker.put_if_absent("rebuilt", "claimed") is not None:
            log_map.size()
            self._loaded.set()
            return
        try:
            counted = self._counter().get().result()
            held = log_map.aggregate(long_sum("entry_cost"))
            if held > counted:
                self._counter().add_and_get(held - counted).result()
        except BaseException:
            # Another worker (or this one, next time round) tries again.
            marker.remove("rebuilt")
            raise
        log.info("rebuilt the log's size from the map: %d bytes held, %d counted before", held, counted)
        self._loaded.set()

    def _counter(self):
        """The PN counter; its calls answer futures."""
        return self._hz.get_pn_counter(size_counter_name(self._hz.shared_config()))

    def _marker(self):
        """Who rebuilt the size after the cluster restarted: a map in memory only, beside the counter, so that
        both are lost together. Its calls wait however long: the log-size thread holds no request."""
        return self._hz.get_map(f"{size_counter_name(self._hz.shared_config())}.rebuilt").blocking()

    def bytes(self) -> int:
        # Until the first sync this worker knows nothing of what the log already holds.
        if not self._synced.is_set():
            self.sync()
        return self._bytes

    def grew(self, cost: int) -> None:
        with self._lock:
            self._bytes += cost
            self._unsent += cost
        self._stored.set()

    @property
    def refresh(self) -> float:
        """Seconds the loop waits before its next sync, unless this worker stores something first."""
        return self._refresh

    def sync(self) -> bool:
        """Send what this worker stored since the last sync, and read the whole log's size. True when something
        moved: this worker had something to send, or the total is not what the last sync read."""
        with self._lock:
            unsent, self._unsent = self._unsent, 0
        added = None

        def give_back_if_failed(done) -> None:
            if done.exception() is not None:
                self._give_back(unsent)

        try:
            added = self._counter().add_and_get(unsent)
            total = wait(added, self._hz.call_timeout)
        except BaseException:
            if added is None:
                self._give_back(unsent)
            else:
                # Given up on (wait's timeout), the add may still land: it is sent again only if it fails.
                added.add_done_callback(give_back_if_failed)
            raise
        with self._lock:
            self._bytes = max(self._bytes, total)
        self._synced.set()
        moved, self._last_total = unsent > 0 or total != self._last_total, total
        return moved

    def _give_back(self, unsent: int) -> None:
        with self._lock:
            self._unsent += unsent

    def _sync_step(self) -> None:
        moved = True
        if self._hz.connected:
            try:
                if not self._loaded.is_set():
                    self.load()
                moved = self.sync()
            except (HazelcastError, HazelcastUnavailable) as exc:
                log.warning("could not count the log's size: %s; trying again in %.2f s", exc, SIZE_REFRESH)
        if moved:
            # Busy: every SIZE_REFRESH, however many entries are stored meanwhile (one call for all of them).
            self._refresh = SIZE_REFRESH
            self._loop.wait(SIZE_REFRESH)
        else:
            # Idle: longer and longer, unless this worker stores an entry first.
            self._refresh = min(self._refresh * 2, SIZE_IDLE_REFRESH)
            self._stored.wait(self._refresh)
        # Cleared before the next sync reads what to send: an entry stored from here on sets it again.
        self._stored.clear()

    def close(self) -> None:
        """On the worker's way out: what it stored, counted before its client goes."""
        self._loop.stop()
        self._stored.set()  # the loop's wait ends now, and it sees it is stopping
        self._loop.stop(timeout=INVOCATION_TIMEOUT + 1.0)
        if self._unsent and self._hz.connected:
            try:
                self.sync()
            except (HazelcastError, HazelcastUnavailable) as exc:
                log.warning("could not count the last %d bytes stored in the log: %s", self._unsent, exc)


class HazelcastMessageLog:
    def __init__(self, hz: Hazelcast, capacity_bytes: int):
        self._hz = hz
        self.capacity_bytes = capacity_bytes
        self.size = LogSize(hz)
        metrics.start_store_failures("log")
        self.stamps = StampClock()
        # The oldest stamp this worker found: where the first page's window ends its first stretch.
        self._oldest: int | None = None
        self._width = FIRST_WINDOW_NS

    @property
    def ready(self) -> bool:
        return self._hz.connected and self.size.loaded

    def add(self, message_id: str, msg: str) -> bool:
        # The wall clock of the machine orders entries across instances (never going back within this worker);
        # put_if_absent keeps the first stamp, so a retried POST neither duplicates the message nor moves it.
        entry = encode(msg, self.stamps.next())
        cost = entry_cost(message_id, entry)
        held = self.size.bytes()
        if held + cost > self.capacity_bytes:
            raise LogFull(f"the log holds {held} of {self.capacity_bytes} bytes; {message_id} needs {cost}")
        try:
            found = log_map_of(self._hz).put_if_absent(message_id, entry)
        except SplitBrainProtectionError as exc:
            # Checked on the partition owner before the write; the client does not retry it.
            raise WritesRefused(str(exc)) from None
        except HazelcastError as exc:
            failure = store_failure(exc)
            if failure is StoreFailure.REFUSED:
                metrics.count_store_failure("log", "refused")
                raise StoreUnavailable(str(exc).split("\n", 1)[0]) from None
            if failure is StoreFailure.OUTCOME_UNKNOWN:
                metrics.count_store_failure("log", "unknown")
                # Committed or not: a retry under the same id finds it through the store's load (no double).
                raise Unavailable(
                    "the log's database (PostgreSQL) failed during the write: whether it was stored is not known",
                    str(exc).split("\n", 1)[0],
                ) from None
            raise
        if found is None:
            self.size.grew(cost)
            return True
        if message_of(convert_json_entry(found)) != msg:
            raise AnotherMessageStored(message_id)
        return False

    def status(self) -> dict:
        """For /health: the size last seen (not read from the cluster: a health check must stay cheap)."""
        held = self.size.seen
        metrics.observe_log_size(held, self.capacity_bytes)
        return {"bytes": held, "capacity_bytes": self.capacity_bytes}

    def page(self, after: LogCursor | None, limit: int) -> tuple[list[str], LogCursor | None]:
        log_map = log_map_of(self._hz)
        oldest = self._oldest_stamp(log_map)
        if oldest is None:
            return [], None
        if after is None:
            # A first page's window also takes in anything older than the oldest entry this worker found (a
            # write stamped before it that landed after it was read): an index lookup that matches nothing
            # when there is none.
            found = self._read_from(log_map, 0, oldest, limit + 1)
            if found:
                self._oldest = stamp_of(found[0])
            return cut_page(found, None, limit)
        # The cursor's own stamp is read on its own, so skipping its `seen` entries costs what that stamp
        # holds (a few at most: one worker never stamps two entries alike), whatever `seen` says; the rest
        # is read from the next stamp on, for what the page still needs. A cursor older than the oldest
        # entry reads from there, as a first page does, instead of widening windows across an empty past.
        shared = predicate.between("this", stamp_bound(after.stamp), stamp_bound(after.stamp + 1))
        found = sorted(log_map.values(predicate.paging(shared, after.seen + limit + 1)))
        want = limit + 1 - max(len(found) - after.seen, 0)
        if want > 0:
            found += self._read_from(log_map, after.stamp + 1, max(after.stamp + 1, oldest), want)
        return cut_page(found, after, limit)

    def _read_from(self, log_map, low: int, start: int, want: int) -> list[str]:
        """Up to `want` entries from stamp `low` on, sorted, a window at a time; the first window ends one
        width after `start`."""
        found: list[str] = []
        width = self._width
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
        return found

    def _oldest_stamp(self, log_map) -> int | None:
        if self._oldest is None:
            # A scan of the whole map, once per worker (and again while the map is empty).
            oldest = log_map.aggregate(min_("this"))
            self._oldest = None if oldest is None else stamp_of(oldest)
        return self._oldest
