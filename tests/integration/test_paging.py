"""Paged reads on the real stack: a walk through the log while clients keep posting, and the messages
cursor that stays on its instance."""

from __future__ import annotations

import collections
import time
import uuid

import requests
from hazelcast.aggregator import count

from contracts.log_entry import encode
from contracts.paging import LogCursor
from devstack import eventually
from devstack.load import Load
from logging_svc.store import HazelcastMessageLog
from servicekit import kvconfig

TIMEOUT = 10
WALK_SECONDS = 60


def test_a_walk_sees_every_message_acknowledged_before_it_once_in_order_while_four_clients_post(stack):
    tag = uuid.uuid4().hex[:8]

    def post(session: requests.Session, n: int) -> requests.Response:
        return session.post(stack.url, json={"msg": f"{tag} {n:05d}"}, timeout=TIMEOUT)

    with Load(post, clients=4, max_requests=5000, max_seconds=WALK_SECONDS + 30, pause=0.0) as load:
        load.wait_for(300)
        before = load.answered(201)
        walk: list[str] = []
        after = None
        pages = 0
        give_up = time.monotonic() + WALK_SECONDS
        while True:
            params = {"limit": 25, **({"after": after} if after else {})}
            response = requests.get(stack.url, params=params, timeout=TIMEOUT)
            assert response.status_code == 200, response.text
            body = response.json()
            assert len(body["logging"]) <= 25
            walk += [m for m in body["logging"] if m.startswith(tag)]
            pages += 1
            after = body["next"]
            if after is None:
                break
            assert time.monotonic() < give_up, f"the walk did not reach the end in {WALK_SECONDS} s ({pages} pages)"
        during = len(load.answered(201)) - len(before)
    assert load.failures() == []
    assert during > 0, "no message was acknowledged while the walk ran"
    twice = [m for m, n in collections.Counter(walk).items() if n > 1]
    assert twice == [], f"seen more than once: {twice[:5]}"
    position = {m: i for i, m in enumerate(walk)}
    missing = [o.body["msg"] for o in before if o.body["msg"] not in position]
    assert missing == [], f"{len(missing)} of {len(before)} acknowledged messages missing, e.g. {missing[:5]}"
    # Acceptance order: a message acknowledged before another was sent comes first.
    for first in before:
        for second in before:
            if first.at < second.started:
                assert position[first.body["msg"]] < position[second.body["msg"]], (first.body, second.body)


def test_a_messages_cursor_reads_the_instance_that_made_it_to_the_end(stack):
    tag = uuid.uuid4().hex[:8]
    for n in range(20):
        assert requests.post(stack.url, json={"msg": f"{tag} {n}"}, timeout=TIMEOUT).status_code == 201

    def all_consumed():
        held = [requests.get(f"{s.url}/messages?limit=10000", timeout=TIMEOUT).json() for s in stack.messages]
        assert sum(1 for body in held for m in body["messages"] if m.startswith(tag)) == 20

    eventually(all_consumed, timeout=15)
    first = requests.get(stack.url, params={"limit": 3}, timeout=TIMEOUT).json()
    instance = next(s for s in stack.messages if s.instance_id == first["messages_from"])
    held = requests.get(f"{instance.url}/messages?limit=10000", timeout=TIMEOUT).json()["messages"]
    walked = first["messages"]
    cursor = first["messages_next"]
    while cursor is not None:
        body = requests.get(stack.url, params={"limit": 3, "messages_after": cursor}, timeout=TIMEOUT).json()
        assert body["messages_from"] == instance.instance_id
        walked += body["messages"]
        cursor = body["messages_next"]
    assert walked == held and len(held) > 3


class CountedMap:
    """The real log map; for each paged read, how many entries its predicate matched on the members (what
    the read cost them: they sort every match, then cut the page) and how many came back."""

    def __init__(self, log_map):
        self._map = log_map
        self.matched: list[int] = []
        self.shipped: list[int] = []

    def values(self, paging):
        self.matched.append(self._map.aggregate(count(), paging._internal_predicate))
        found = self._map.values(paging)
        self.shipped.append(len(found))
        return found

    def aggregate(self, aggregator):
        return self._map.aggregate(aggregator)


class Connected:
    connected = True

    def __init__(self, log_map):
        self._map = log_map

    def shared_config(self) -> kvconfig.SharedConfig:
        return kvconfig.SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_map(self, name: str, timeout: float | None = None):
        return self._map


def test_a_crafted_log_cursor_reads_a_page_not_the_whole_log(own_stack, hz_client):
    stack = own_stack(logging=1, messages=1)
    log_map = hz_client.get_map(kvconfig.load(stack.agent.client()).map_name).blocking()
    stored = 3000
    first = time.time_ns() - 3600 * 10**9
    stamps = [first + n * 10**6 for n in range(stored)]
    for start in range(0, stored, 500):
        log_map.put_all({str(uuid.uuid4()): encode(f"m{n:05d}", stamps[n]) for n in range(start, start + 500)})
    crafted = {
        "00000000000000000000.999999999": ["m00000", "m00001"],
        f"{stamps[1500]:020d}.999999999": ["m01501", "m01502"],
        f"{stamps[-1]:020d}.999999999": [],
    }
    for after, expected in crafted.items():
        response = requests.get(stack.url, params={"limit": 2, "after": after}, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.json()["logging"] == expected, after

    # The same reads through logging_svc's store in this process, on the same members and index, counted.
    counted = CountedMap(log_map)
    store = HazelcastMessageLog(Connected(counted), capacity_bytes=1 << 40)
    store.page(None, 2)  # a worker's first window spans a second (1,000 entries here); then it has learned
    for after, expected in crafted.items():
        counted.matched.clear()
        counted.shipped.clear()
        assert store.page(LogCursor.decode(after), 2)[0] == expected
        figures = (after, sum(counted.matched), sum(counted.shipped), counted.matched)
        # The cursor's own stamp (one entry here), then the page and one more, read in a few windows.
        assert sum(counted.matched) <= 12 and sum(counted.shipped) <= 1 + 3, figures
