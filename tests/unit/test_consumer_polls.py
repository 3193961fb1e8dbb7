"""messages_svc's consumer counts every poll of the queue by how it ended: an item, nothing, or an error."""

from __future__ import annotations

import time

import pytest
from hazelcast.errors import HazelcastError, SplitBrainProtectionError
from prometheus_client import REGISTRY

from contracts import queue_item
from messages_svc.consumer import POLL_TIMEOUT, Consumer, MessageStore
from servicekit.gunicorn_hooks import Intake
from servicekit.kvconfig import SharedConfig


def polls(result: str) -> float:
    return REGISTRY.get_sample_value("queue_polls_total", {"result": result}) or 0.0


class FailingQueue:
    def __init__(self, error: Exception):
        self.error = error

    def poll(self, *args):
        raise self.error


class ConnectedHazelcast:
    connected = True

    def __init__(self, queue):
        self._queue = queue

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_queue(self, name: str, timeout: float | None = None):
        return self

    def blocking(self):
        return self._queue


@pytest.mark.parametrize(
    "error",
    [HazelcastError("member gone"), SplitBrainProtectionError("Split brain protection exception")],
    ids=["hazelcast-error", "split-brain-refusal"],
)
def test_a_failed_poll_is_counted_as_an_error(error):
    consumer = Consumer(ConnectedHazelcast(FailingQueue(error)), MessageStore(), Intake())  # type: ignore[arg-type]
    before = {result: polls(result) for result in ("item", "empty", "error")}
    with pytest.raises(HazelcastError):
        consumer._take_one()
    assert {result: polls(result) - before[result] for result in before} == {"item": 0, "empty": 0, "error": 1}


class ListenedQueue:
    """A queue that answers every poll at once and calls its item listener on an offer, as a member does."""

    def __init__(self):
        self.items: list[str] = []
        self.poll_args: list[tuple] = []
        self.item_added = None

    def add_listener(self, include_value: bool = False, item_added_func=None):
        self.item_added = item_added_func

    def poll(self, *args):
        self.poll_args.append(args)
        return self.items.pop(0) if self.items else None

    def offer(self, item: str) -> None:
        self.items.append(item)
        assert self.item_added is not None, "the consumer listens to the queue"
        self.item_added(None)


def test_an_idle_consumer_never_parks_a_poll_on_a_member_and_takes_an_item_as_soon_as_it_is_added():
    """A poll parked in a member's wait set while the members repartition can take an item and have its answer
    dropped (docs/RELIABILITY.md, "A host cut off"): the consumer polls without a timeout and waits for the
    queue's item listener instead, with a look every POLL_TIMEOUT for an event lost in a failover."""
    queue = ListenedQueue()
    store = MessageStore()
    consumer = Consumer(ConnectedHazelcast(queue), store, Intake()).start()  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 5
        while queue.item_added is None or not queue.poll_args:
            assert time.monotonic() < deadline, "the consumer neither listened nor polled"
            time.sleep(0.01)
        time.sleep(0.1)  # idle: waiting for the listener
        idle_polls = len(queue.poll_args)
        offered = time.monotonic()
        queue.offer(queue_item.encode("id-1", "hello"))
        while store.snapshot() != ["hello"]:
            assert time.monotonic() - offered < POLL_TIMEOUT / 2, "the item waited for the next look"
            time.sleep(0.005)
    finally:
        consumer.stop()
    assert idle_polls <= 2, f"{idle_polls} polls of an empty queue in 0.1 s"
    assert set(queue.poll_args) == {()}, f"a poll with a timeout, parked on the member: {queue.poll_args}"
