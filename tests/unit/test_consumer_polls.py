"""messages_svc's consumer counts every poll of the queue by how it ended: an item, nothing, or an error."""

from __future__ import annotations

import pytest
from hazelcast.errors import HazelcastError, SplitBrainProtectionError
from prometheus_client import REGISTRY

from messages_svc.consumer import Consumer, MessageStore
from servicekit.gunicorn_hooks import Intake
from servicekit.kvconfig import SharedConfig


def polls(result: str) -> float:
    return REGISTRY.get_sample_value("queue_polls_total", {"result": result}) or 0.0


class FailingQueue:
    def __init__(self, error: Exception):
        self.error = error

    def poll(self, timeout: float):
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
