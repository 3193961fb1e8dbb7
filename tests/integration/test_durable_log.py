"""The log and the queue survive what memory alone does not: the members write them through to PostgreSQL
(hazelcast-store/). Each test here fails with the store switched off (HAZELCAST_STORE=off: the log as it
was before the store), at its first assertion on what survived."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
import requests

from devstack import Load, eventually, post_acknowledged, read_all, running_stack
from devstack.postgres import PostgresServer
from logging_svc.store import encode, entry_cost


def post(url: str, msg: str, **headers: str) -> requests.Response:
    return requests.post(url, json={"msg": msg}, headers=headers, timeout=15)


def rows(database: PostgresServer, query: str) -> list[str]:
    return [line for line in database.sql(query).splitlines() if line]


@pytest.mark.timeout(600)
def test_messages_queued_while_no_consumer_ran_are_consumed_once_each_after_a_whole_restart(own_database, log_dir):
    database = own_database
    run = uuid.uuid4().hex[:8]
    sent = [f"queued-{run}-{n}" for n in range(60)]
    with running_stack(log_dir, messages=2, store=database) as stack:
        for instance in stack.messages:
            instance.proc.stop()
        for msg in sent:
            answer = post_acknowledged(stack.url, msg)
            assert answer.status_code == 201, answer.text
    # Everything stopped: Consul, every member, every instance. A new cluster on the same database.
    with running_stack(log_dir, messages=2, store=database) as stack:

        def consumed() -> Counter:
            held = Counter()
            for instance in stack.messages:
                held.update(read_all(f"{instance.url}/messages", "messages"))
            mine = Counter({m: c for m, c in held.items() if m.startswith(f"queued-{run}-")})
            assert sum(mine.values()) >= len(sent), f"{sum(mine.values())} of {len(sent)} consumed"
            return mine

        mine = eventually(consumed, 60, interval=0.5, what="every queued message consumed after the restart")
        assert sorted(mine) == sorted(sent)
        assert set(mine.values()) == {1}, {m: c for m, c in mine.items() if c != 1}
        eventually(lambda: _assert(rows(database, "SELECT count(*) FROM queue_items") == ["0"]), 15,
                   what="every consumed item deleted from queue_items")  # fmt: skip


def _assert(condition: bool) -> None:
    assert condition


@pytest.mark.timeout(600)
def test_a_stopped_database_answers_503_never_201_and_posts_succeed_again_once_it_is_back(own_database, log_dir):
    database = own_database
    with running_stack(log_dir, store=database) as stack:
        # The idempotency answers are not the log: they stay in memory (a key is not a message id, and the
        # log's store would refuse it), while the message the key names is written through.
        keyed = post_acknowledged(stack.url, "with a key")  # a 503 of a stack still warming is asked again
        assert keyed.status_code == 201, keyed.text
        assert rows(database, f"SELECT count(*) FROM log_entries WHERE id = '{keyed.json()['id']}'") == ["1"]

        run = uuid.uuid4().hex[:8]
        with Load(lambda s, n: s.post(stack.url, json={"msg": f"load-{run}-{n}"}, timeout=15), clients=4,
                  max_requests=3000, max_seconds=150, pause=0.02) as load:  # fmt: skip
            load.wait_for(40)
            database.stop()
            stopped = len(load.snapshot())
            eventually(lambda: _assert(any(o.status == 503 for o in load.snapshot()[stopped:])), 30,
                       what="a 503 while the database is down")  # fmt: skip
            for _ in range(5):
                page = requests.get(stack.url, timeout=10)
                assert page.status_code == 200, page.text
                assert page.json()["logging"], "GET /facade answers the log from memory"
            database.start()
            back = len(load.snapshot())
            eventually(lambda: _assert(any(o.status == 201 for o in load.snapshot()[back:])), 60,
                       what="a 201 once the database is back, without a restart")  # fmt: skip
            load.wait_for(back + 40, timeout=60)
        outcomes = load.snapshot()
    refused = [o for o in outcomes if o.status == 503]
    assert refused, "no POST was refused while the database was down"
    # A refusal before anything was stored names the database; one after the log write says what was done.
    unclear = [
        o.body for o in refused if o.body and "logged" not in o.body and "database" not in o.body.get("refused", "")
    ]
    assert not unclear, unclear
    acknowledged = {o.body["id"]: o.body["msg"] for o in outcomes if o.status == 201}
    stored = dict(line.split("|", 1) for line in rows(database, "SELECT id, substr(entry, 21) FROM log_entries"))
    # Never a 201 for a message that is not committed, and nothing acknowledged is lost.
    assert {i: stored.get(i) for i in acknowledged} == acknowledged
    assert {o.status for o in outcomes} <= {201, 503}, Counter(o.kind for o in outcomes)


# More than a worker's request timeout lets the members scan, and little enough to load in seconds.
STORED_ROWS = 200_000


@pytest.mark.timeout(600)
def test_a_log_too_large_to_scan_within_a_request_timeout_is_loaded_and_counted_after_a_restart(own_database, log_dir):
    """After a restart the logging worker waits for the members to load the log and has them add up its size:
    calls that wait for the members, not for the request timeout. Given up on after HTTP_READ_TIMEOUT and sent
    again every quarter second, each a scan of the whole map, they kept a stack with 1,000,000 messages from
    ever passing (./scripts/bench's reload); here the timeout is made short instead of the log long."""
    first = 1_700_000_000_000_000_000
    entries = {str(uuid.uuid4()): encode(f"stored before the restart {n}", first + n) for n in range(STORED_ROWS)}
    copy = "".join(f"{key}\t{entry}\n" for key, entry in entries.items())
    own_database.cluster.psql(None, "-c", "\\copy log_entries (id, entry) FROM STDIN", user=own_database.cluster.user,
                              stdin=copy)  # fmt: skip
    with running_stack(log_dir, logging=1, messages=0, facades=0, store=own_database,
                       env={"HTTP_READ_TIMEOUT": "0.2"}) as stack:  # fmt: skip
        expected = sum(entry_cost(key, entry) for key, entry in entries.items())

        def counted() -> None:
            for _ in range(4):  # a request reaches one of the instance's workers; a few reach each of them
                health = requests.get(f"{stack.logging[0].url}/health", timeout=10).json()
                assert health["details"]["log"]["bytes"] == expected, health["details"]["log"]

        eventually(counted, 30, interval=0.5, what="the log's size rebuilt from the members' sum")
