"""The log's entry encoding: order by acceptance time, the message back unchanged."""

from hazelcast.core import HazelcastJsonValue
from hypothesis import given
from hypothesis import strategies as st

from logging_svc.store import convert_json_entry, encode, ordered


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
