"""The Hazelcast client's reactor must never sleep through a wakeup (see servicekit.hz)."""

import os

import pytest
from hazelcast import reactor

from servicekit import hz


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
