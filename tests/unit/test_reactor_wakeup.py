"""The Hazelcast client's reactor must never sleep through a wakeup (see servicekit.hz)."""

import os
import threading

import pytest
from hazelcast import reactor

from servicekit import hz
from servicekit.kvconfig import SharedConfig
from servicekit.settings import Settings


def pending(waker) -> bool:
    try:
        data = os.read(waker._read_fd, 4096)
    except BlockingIOError:
        return False
    os.write(waker._write_fd, data)
    return bool(data)


@pytest.fixture
def waker(monkeypatch):
    # A fresh class attribute per test: the fix must be what makes the difference.
    monkeypatch.setattr(reactor._PipedWaker, "handle_read", reactor._PipedWaker.handle_read)
    w = reactor._PipedWaker({})
    yield w
    w.close()


def wake_during_drain(waker, monkeypatch) -> None:
    """Run handle_read with another thread's wake() landing right before the pipe is read."""
    real_read = os.read
    calls = []

    def read(fd, n):
        if fd == waker._read_fd and not calls:
            calls.append(fd)
            waker.wake()
        return real_read(fd, n)

    monkeypatch.setattr(reactor.os, "read", read)
    monkeypatch.setattr(hz.os, "read", read)
    waker.wake()
    waker.handle_read()
    monkeypatch.setattr(reactor.os, "read", real_read)
    monkeypatch.setattr(hz.os, "read", real_read)


def test_the_client_as_shipped_loses_a_wakeup_that_lands_during_the_drain(waker, monkeypatch):
    wake_during_drain(waker, monkeypatch)
    # Stuck: marked awake with nothing in the pipe, so no later wake() will write either.
    assert waker.awake and not pending(waker)


def test_with_the_fix_a_wakeup_during_the_drain_is_kept(waker, monkeypatch):
    hz.fix_lost_reactor_wakeup()
    wake_during_drain(waker, monkeypatch)
    assert not waker.awake
    waker.wake()
    assert waker.awake and pending(waker)



def test_the_path_every_service_takes_applies_the_fix(waker, monkeypatch):
    """Hazelcast(settings).start(), as each service's create_app calls it, with Consul KV and the client
    stubbed; tests/integration/test_hazelcast_client.py checks the same on the real cluster."""
    built = threading.Event()

    class StubClient:
        def __init__(self, **kwargs):
            built.set()

        def shutdown(self):
            pass

    config = SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")
    monkeypatch.setattr(hz.kvconfig, "load", lambda consul: config)
    monkeypatch.setattr(hz.hazelcast, "HazelcastClient", StubClient)
    service_hz = hz.Hazelcast(Settings.from_env("logging-service", 8081, env={})).start()
    try:
        assert built.wait(5), "the client was never built"
    finally:
        service_hz.close()
    wake_during_drain(waker, monkeypatch)
    assert not waker.awake
