"""The paged-read contract (contracts/paging.py, servicekit/web.py) and the page cut of the log
(logging_svc/store.py), without Hazelcast; the walk under load is in tests/integration/test_paging.py."""

from __future__ import annotations

import time

import pytest
from hazelcast.predicate import PagingPredicate

from contracts.paging import BadCursor, LogCursor, MessagesCursor
from logging_svc.store import HazelcastMessageLog, cut_page, encode
from messages_svc.consumer import MessageStore
from servicekit.kvconfig import SharedConfig


def walk(entries: list[str], limit: int) -> list[str]:
    """Follow the cursors through sorted `entries` the way the store reads them: from the cursor's stamp on."""
    seen: list[str] = []
    after = None
    for _ in range(len(entries) + 2):
        start = 0 if after is None else next(i for i, e in enumerate(entries) if int(e[:20]) >= after.stamp)
        want = limit + 1 + (after.seen if after else 0)
        page, after = cut_page(entries[start : start + want], after, limit)
        seen += page
        if after is None:
            return seen
    raise AssertionError("the walk did not end")


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 100])
def test_a_walk_sees_entries_that_share_a_stamp_exactly_once(limit):
    stamps = [1, 2, 2, 2, 3, 3, 4, 5, 5, 5, 5, 5, 6]
    entries = sorted(encode(f"m{i}", s) for i, s in enumerate(stamps))
    assert walk(entries, limit) == [e[20:] for e in entries]


def test_a_page_that_holds_the_rest_of_the_log_has_no_next():
    entries = [encode(f"m{i}", i + 1) for i in range(1000)]
    page, following = cut_page(entries, None, 1000)
    assert len(page) == 1000 and following is None
    page, following = cut_page(entries, None, 999)
    assert following == LogCursor(999, 1)


def test_cursors_round_trip_and_anything_else_is_refused():
    assert LogCursor.decode(LogCursor(1732870000123456789, 3).encode()) == LogCursor(1732870000123456789, 3)
    cursor = MessagesCursor("messages-service-127.0.0.1-8084", 42)
    assert MessagesCursor.decode(cursor.encode()) == cursor
    for bad in ["", "x", "1.1", "0" * 20 + ".0", "0" * 20 + ".-1", "0" * 21 + ".1", "0" * 20 + "1"]:
        with pytest.raises(BadCursor):
            LogCursor.decode(bad)
    for bad in ["", "7", "7.", ".id", "x.id", "7.a b", "-1.id"]:
        with pytest.raises(BadCursor):
            MessagesCursor.decode(bad)


def test_messages_pages_follow_the_numbers_the_store_gave():
    store = MessageStore()
    for msg in "abcde":
        store.append(msg)
    page, after = store.page(None, 2)
    assert page == ["a", "b"] and after is not None
    assert store.page(after, 2) == (["c", "d"], after + 2)
    assert store.page(after + 2, 2) == (["e"], None)
    assert store.page(after + 3, 2) == ([], None)
    assert store.page(None, 5) == (list("abcde"), None)


def test_a_restarted_store_reads_an_old_cursor_from_its_oldest_message():
    old = MessageStore()
    for msg in "abc":
        old.append(msg)
    _, cursor = old.page(None, 2)
    time.sleep(0.001)
    new = MessageStore()
    new.append("x")
    assert cursor is not None and new.page(cursor, 2) == (["x"], None)


class RecordingMap:
    """Sorted entries answering paging predicates the way the SORTED index does; records how many entries
    each read matched, which is what a read costs the members."""

    def __init__(self, entries: list[str]):
        self.entries = sorted(entries)
        self.matched: list[int] = []

    def values(self, pred=None):
        assert isinstance(pred, PagingPredicate), "a read without a page size decodes the whole map"
        inner = vars(pred._internal_predicate)
        if "from_" in inner:
            matched = [e for e in self.entries if inner["from_"] <= e <= inner["to"]]
        elif inner["is_less"]:
            matched = [e for e in self.entries if e < inner["value"] or (inner["is_equal"] and e == inner["value"])]
        else:
            matched = [e for e in self.entries if e > inner["value"] or (inner["is_equal"] and e == inner["value"])]
        self.matched.append(len(matched))
        return matched[: pred.page_size]

    def aggregate(self, aggregator):
        return min(self.entries, default=None)


class Connected:
    connected = True

    def __init__(self, log_map):
        self._map = log_map

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_map(self, name: str, timeout: float | None = None):
        return self._map


HOUR_NS = 3600 * 10**9
NOW = time.time_ns()


def store_walk(store: HazelcastMessageLog, limit: int) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(10_000):
        page, after = store.page(after, limit)
        seen += page
        if after is None:
            return seen
    raise AssertionError("the walk did not end")


def test_the_store_walks_a_log_with_gaps_and_shared_stamps_in_order():
    stamps = [NOW - 200 * HOUR_NS + i * 10**6 for i in range(50)]  # a burst a week ago
    stamps += [NOW - HOUR_NS] * 7 + [NOW - 1000 + i for i in range(30)]  # one stamp for seven, then now
    entries = [encode(f"m{i:03d}", s) for i, s in enumerate(stamps)]
    store = HazelcastMessageLog(Connected(RecordingMap(entries)), capacity_bytes=1 << 40)
    for limit in (1, 3, 7, 1000):
        assert store_walk(store, limit) == [e[20:] for e in sorted(entries)]


def test_a_page_matches_about_what_it_holds_not_what_the_log_holds():
    entries = [encode(f"m{i:06d}", NOW - HOUR_NS + i * 10**6) for i in range(20_000)]
    log_map = RecordingMap(entries)
    store = HazelcastMessageLog(Connected(log_map), capacity_bytes=1 << 40)
    store.page(None, 100)  # the first window of a worker spans a second: 1,000 entries here
    log_map.matched.clear()
    page, following = store.page(None, 100)
    middle, _ = store.page(LogCursor(NOW - HOUR_NS + 10_000 * 10**6, 1), 100)
    assert page == [e[20:] for e in entries[:100]] and middle == [e[20:] for e in entries[10_001:10_101]]
    assert following is not None
    assert max(log_map.matched) <= 4 * 101, log_map.matched


def test_an_entry_older_than_the_oldest_a_worker_found_is_on_the_first_page():
    entries = [encode(f"m{i}", NOW - HOUR_NS + i) for i in range(10)]
    log_map = RecordingMap(entries)
    store = HazelcastMessageLog(Connected(log_map), capacity_bytes=1 << 40)
    assert store.page(None, 3)[0] == ["m0", "m1", "m2"]
    log_map.entries.insert(0, encode("late", NOW - 2 * HOUR_NS))
    assert store.page(None, 3)[0] == ["late", "m0", "m1"]


@pytest.mark.parametrize("seen", [1, 999_999_999])
def test_a_crafted_cursor_costs_what_its_page_holds_not_what_the_log_holds(seen):
    entries = [encode(f"m{i:06d}", NOW - HOUR_NS + i * 10**6) for i in range(20_000)]
    log_map = RecordingMap(entries)
    store = HazelcastMessageLog(Connected(log_map), capacity_bytes=1 << 40)
    store.page(None, 10)  # the first window of a worker spans a second; then it learns the log's density
    middle = int(entries[10_000][:20])
    # Before the oldest entry (what `after=00000000000000000000.999999999` says), in the middle, at the end.
    for cursor, expected in [(LogCursor(0, seen), entries[:10]), (LogCursor(middle, seen), entries[10_001:10_011])]:
        log_map.matched.clear()
        page, following = store.page(cursor, 10)
        assert page == [e[20:] for e in expected] and following is not None
        assert sum(log_map.matched) <= 4 * 11, (cursor, log_map.matched)
    log_map.matched.clear()
    assert store.page(LogCursor(int(entries[-1][:20]), seen), 10) == ([], None)
    assert sum(log_map.matched) <= 4 * 11, log_map.matched


def test_a_cursor_that_claims_more_of_a_stamp_than_it_holds_goes_on_after_that_stamp():
    entries = sorted(encode(f"m{i}", s) for i, s in enumerate([NOW - HOUR_NS] * 5 + [NOW - HOUR_NS + 1] * 3))
    store = HazelcastMessageLog(Connected(RecordingMap(entries)), capacity_bytes=1 << 40)
    assert store.page(LogCursor(NOW - HOUR_NS, 2), 2) == ([e[20:] for e in entries[2:4]], LogCursor(NOW - HOUR_NS, 4))
    assert store.page(LogCursor(NOW - HOUR_NS, 999), 4) == ([e[20:] for e in entries[5:]], None)
