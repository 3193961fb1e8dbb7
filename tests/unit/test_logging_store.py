"""The log's entry encoding: order by acceptance time, the message back unchanged."""

from hazelcast.core import HazelcastJsonValue
from hypothesis import given
from hypothesis import strategies as st

from logging_svc.store import convert_json_entry, encode, entry_cost, ordered


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
    # Measured (three members, one backup, jcmd GC.heap_info after a full GC): 322 bytes a copy for a
    # message of 100 characters, 4,472 for one of 4,000 (docs/RELIABILITY.md, "Capacity").
    key = "0" * 36
    assert entry_cost(key, encode("x" * 100, 1)) >= 322
    assert entry_cost(key, encode("x" * 4000, 1)) >= 4472
    # ... and not so far above it that the log refuses what the members would hold.
    assert entry_cost(key, encode("x" * 100, 1)) <= 322 * 1.1
