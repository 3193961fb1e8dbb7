"""The members and the logging service count an entry's cost alike: after the cluster restarts, the log's size
is rebuilt from the members' sum of the map's entry_cost attribute (hazelcast-store's EntryCost), and from then
on each worker adds logging_svc.store.entry_cost for what it stores. Two formulas that drift apart would make
the capacity refusal start early or late after every restart."""

from __future__ import annotations

import uuid

from hazelcast.aggregator import long_sum

from logging_svc.store import encode, entry_cost


def test_the_members_sum_of_entry_cost_is_what_the_logging_service_counts(hz_client):
    # Every length modulo 20 (the formula rounds down halves and twentieths), characters of 1 to 4 UTF-8 bytes,
    # and the longest message.
    messages = ["x" * n for n in range(40)] + ["été", "☃ snow", "𝄞 clef", "ü" * 1000, "m" * 4096]
    entries = {str(uuid.uuid4()): encode(message, 1_000 + n) for n, message in enumerate(messages)}
    log_map = hz_client.get_map(f"entry-cost-{uuid.uuid4().hex}").blocking()
    try:
        log_map.put_all(entries)
        assert log_map.aggregate(long_sum("entry_cost")) == sum(entry_cost(k, v) for k, v in entries.items())
    finally:
        log_map.destroy()
