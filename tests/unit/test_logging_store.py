"""The log's entry encoding: order by acceptance time, the message back unchanged."""

import time
import uuid

import pytest
from hazelcast.core import HazelcastJsonValue
from hazelcast.errors import HazelcastError, OperationTimeoutError, SplitBrainProtectionError
from hazelcast.future import Future
from hypothesis import given
from hypothesis import strategies as st

from contracts.log_entry import message_of
from devstack.processes import eventually
from logging_svc import create_app, store
from logging_svc.settings import LoggingSettings
from logging_svc.store import HazelcastMessageLog, LogSize, convert_json_entry, encode, entry_cost, ordered, stamp_of
from servicekit.kvconfig import SharedConfig


@given(st.lists(st.tuples(st.text(), st.integers(min_value=0, max_value=10**19)), max_size=50))
def test_ordered_sorts_by_stamp_and_returns_messages_unchanged(items):
    entries = [encode(msg, stamp) for msg, stamp in items]
    by_stamp = sorted(items, key=lambda item: (item[1], item[0]))
    assert ordered(reversed(entries)) == [msg for msg, _ in by_stamp]


def test_entries_written_as_json_before_the_string_encoding_still_read():
    old = HazelcastJsonValue({"msg": "from before", "ts": 2})
    assert convert_json_entry(old) == encode("from before", 2)
    assert convert_json_entry(encode("new", 3)) == encode("new", 3)
    assert ordered([encode("new", 3), old, encode("first", 1)]) == ["first", "from before", "new"]


def test_entry_cost_is_at_least_what_a_member_was_measured_to_use():
    # Measured (three members, one backup, the SORTED index, jcmd GC.heap_info after a full GC): 526 bytes
    # a copy for a message of 100 characters, 6,547 for one of 4,000 (docs/OPERATIONS.md, "How much the stack holds").
    key = "0" * 36
    assert entry_cost(key, encode("x" * 100, 1)) >= 526
    assert entry_cost(key, encode("x" * 4000, 1)) >= 6547
    # ... and not so far above it that the log refuses what the members would hold.
    assert entry_cost(key, encode("x" * 100, 1)) <= 526 * 1.1


def done(value) -> Future:
    future: Future = Future()
    if isinstance(value, Exception):
        future.set_exception(value)
    else:
        future.set_result(value)
    return future


class FakeCounter:
    """A PN counter replica that answers `total` (which may lag what was added), or raises `error`; with
    `silent`, its answers are the futures in `pending`, answered when the test says."""

    def __init__(self):
        self.total = 0
        self.added: list[int] = []
        self.error: Exception | None = None
        self.silent = False
        self.pending: list[Future] = []

    def add_and_get(self, delta):
        if self.error:
            return done(self.error)
        self.added.append(delta)
        if self.silent:
            self.pending.append(Future())
            return self.pending[-1]
        return done(self.total)


class CounterHazelcast:
    connected = True
    call_timeout = 0.05

    def __init__(self, counter):
        self.counter = counter

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_pn_counter(self, name: str):
        return self.counter


def test_the_log_size_seen_never_goes_back_and_a_failed_sync_keeps_what_was_not_sent():
    counter = FakeCounter()
    size = LogSize(CounterHazelcast(counter))
    counter.total = 1000
    assert size.bytes() == 1000  # the first look asks the cluster
    size.grew(300)
    assert size.bytes() == 1300 and counter.added == [0]  # no call on the request path
    counter.error = HazelcastError("member gone")
    with pytest.raises(HazelcastError):
        size.sync()
    counter.error = None
    counter.total = 1100  # a replica that has not seen the others' increments yet
    size.sync()
    assert counter.added == [0, 300] and size.seen == 1300
    counter.total = 5000
    size.sync()
    assert size.seen == 5000 and counter.added[-1] == 0


def test_a_sync_whose_member_does_not_answer_gives_up_and_sends_its_bytes_again_only_if_the_add_failed():
    counter = FakeCounter()
    size = LogSize(CounterHazelcast(counter))
    size.sync()
    counter.silent = True
    size.grew(300)
    with pytest.raises(OperationTimeoutError):
        size.sync()  # the member is silent: the wait ends at call_timeout, the add may still land
    counter.pending[-1].set_result(300)  # ...and it did: not sent again
    counter.silent = False
    size.sync()
    assert counter.added == [0, 300, 0]
    counter.silent = True
    size.grew(50)
    with pytest.raises(OperationTimeoutError):
        size.sync()
    counter.pending[-1].set_exception(HazelcastError("member gone"))  # ...and it did not: sent again
    counter.silent = False
    size.sync()
    assert counter.added == [0, 300, 0, 50, 50]


class RefusingMap:
    """A map on a member that sees too few members: every write is refused by split-brain protection."""

    def put_if_absent(self, key, value):
        raise SplitBrainProtectionError("Split brain protection exception: two-members has failed!")


class RefusingHazelcast(CounterHazelcast):
    def get_map(self, name: str, timeout: float | None = None):
        return RefusingMap()


def test_a_write_refused_for_lack_of_members_is_a_503_that_says_nothing_was_stored():
    store = HazelcastMessageLog(RefusingHazelcast(FakeCounter()), capacity_bytes=1 << 40)
    app = create_app(LoggingSettings.from_env("logging-service", 8081, env={}), message_log=store)
    answer = app.test_client().post("/logging", json={"id": str(uuid.uuid4()), "msg": "hi"})
    assert answer.status_code == 503
    assert answer.json == {
        "error": "the Hazelcast cluster has too few members to accept writes: nothing was stored",
        "stored": False,
    }
    assert store.size.seen == 0


def test_an_instances_stamps_keep_rising_when_its_wall_clock_steps_back():
    from contracts.log_entry import StampClock

    readings = iter([1_000, 2_000, 1_500, 1_500, 900, 2_001, 5_000])
    clock = StampClock(wall=lambda: next(readings))
    stamps = [clock.next() for _ in range(7)]
    assert stamps == [1_000, 2_000, 2_001, 2_002, 2_003, 2_004, 5_000]


def test_the_store_stamps_through_its_clock():
    store = HazelcastMessageLog(RecordingHazelcast(FakeCounter()), capacity_bytes=1 << 40)
    store.stamps = StampClockStub([7, 7, 3])
    for n in range(3):
        store.add(str(uuid.UUID(int=n)), "m")
    assert [stamp_of(e) for e in store._hz.stored] == [7, 7, 3]


class StampClockStub:
    def __init__(self, stamps):
        self._stamps = iter(stamps)

    def next(self):
        return next(self._stamps)


class RecordingHazelcast(CounterHazelcast):
    def __init__(self, counter):
        super().__init__(counter)
        self.stored: list[str] = []

    def get_map(self, name: str, timeout: float | None = None):
        return self

    def put_if_absent(self, key, value):
        self.stored.append(value)


class OneMap(CounterHazelcast):
    """The log's map as put_if_absent sees it: what the id already held comes back, and every call is counted."""

    def __init__(self, counter):
        super().__init__(counter)
        self.entries: dict[str, object] = {}
        self.calls = 0

    def get_map(self, name: str, timeout: float | None = None):
        return self

    def put_if_absent(self, key, value):
        self.calls += 1
        found = self.entries.get(key)
        if found is None:
            self.entries[key] = value
        return found


def test_an_id_that_holds_another_message_is_a_409_that_stores_nothing_and_keeps_the_first():
    hz = OneMap(FakeCounter())
    store = HazelcastMessageLog(hz, capacity_bytes=1 << 40)
    client = create_app(LoggingSettings.from_env("logging-service", 8081, env={}), message_log=store).test_client()
    message_id = str(uuid.uuid4())
    assert client.post("/logging", json={"id": message_id, "msg": "pay 10"}).status_code == 201
    other = client.post("/logging", json={"id": message_id, "msg": "pay 9999"})
    assert other.status_code == 409, other.json
    assert "another message" in other.json["error"]
    assert "pay 10" not in other.get_data(as_text=True), "the stored text is not shown"
    again = client.post("/logging", json={"id": message_id, "msg": "pay 10"})
    assert again.status_code == 200 and again.json["created"] is False
    assert [message_of(e) for e in hz.entries.values()] == ["pay 10"]
    assert hz.calls == 3, "one put_if_absent per POST: its answer is what is compared"
    # An entry written as JSON before the string encoding compares by its message too.
    old_id = str(uuid.uuid4())
    hz.entries[old_id] = HazelcastJsonValue({"msg": "from before", "ts": 2})
    assert client.post("/logging", json={"id": old_id, "msg": "from before"}).status_code == 200
    assert client.post("/logging", json={"id": old_id, "msg": "from after"}).status_code == 409


def test_an_idle_log_size_is_read_less_and_less_often_and_an_entry_stored_is_sent_at_once(monkeypatch):
    # Bounds far from the waits they tell apart: the unit tests run beside the integration tests' stacks.
    monkeypatch.setattr(store, "SIZE_REFRESH", 0.01)
    monkeypatch.setattr(store, "SIZE_IDLE_REFRESH", 1.0)
    counter = FakeCounter()
    size = LogSize(CounterHazelcast(counter))
    size._loaded.set()  # the map's load is other tests': here the counter alone
    size.start()

    def idle_wait_at_its_longest():
        assert size.refresh == 1.0

    try:
        eventually(idle_wait_at_its_longest, 10, interval=0.005, what="the idle wait at SIZE_IDLE_REFRESH")
        calls = len(counter.added)
        time.sleep(1.5)
        assert len(counter.added) - calls <= 2, "an idle log's size read more than once per SIZE_IDLE_REFRESH"
        calls = len(counter.added)
        size.grew(70)

        def sent_and_short_waits_again():
            assert 70 in counter.added[calls:], "an entry stored waited out the idle wait"
            assert len(counter.added) - calls >= 4, "the waits did not go back to SIZE_REFRESH"

        eventually(sent_and_short_waits_again, 0.6, interval=0.005, what="the entry sent, then short waits")
        counter.total = 500  # another worker's entries: seen within the idle wait

        def seen():
            assert size.seen == 500

        eventually(seen, 2.0, interval=0.01, what="the others' entries seen")
    finally:
        started = time.monotonic()
        size.close()
        assert time.monotonic() - started < 0.5, "close waited out the idle wait"


def test_a_busy_worker_sends_what_it_stores_every_size_refresh_not_once_an_entry(monkeypatch):
    monkeypatch.setattr(store, "SIZE_REFRESH", 0.05)
    counter = FakeCounter()
    size = LogSize(CounterHazelcast(counter))
    size._loaded.set()
    size.start()
    try:
        deadline, stored = time.monotonic() + 0.5, 0
        while time.monotonic() < deadline:
            size.grew(10)
            stored += 1
            time.sleep(0.001)
    finally:
        size.close()
    assert sum(counter.added) == 10 * stored, "an entry's bytes were not sent, or sent twice"
    assert len(counter.added) <= 0.5 / 0.05 + 3, f"{len(counter.added)} calls for {stored} entries in 0.5 s"
