"""The Hazelcast client's reactor must never sleep through a wakeup (see servicekit.hazelcast_reactor_fix)."""

import logging
import os
import threading
import time

import pytest
from hazelcast import reactor

from servicekit import hazelcast_reactor_fix as fix
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
    # The shipped handler for each test, even when a service client in this process applied the fix
    # before: the fix must be what makes the difference.
    monkeypatch.setattr(reactor._PipedWaker, "handle_read", fix.SHIPPED_HANDLE_READ)
    monkeypatch.setattr(reactor._WakeableLoop, "run_loop", fix.SHIPPED_RUN_LOOP)
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
    monkeypatch.setattr(fix.os, "read", read)
    waker.wake()
    waker.handle_read()
    monkeypatch.setattr(reactor.os, "read", real_read)
    monkeypatch.setattr(fix.os, "read", real_read)


def test_the_client_as_shipped_loses_a_wakeup_that_lands_during_the_drain(waker, monkeypatch):
    wake_during_drain(waker, monkeypatch)
    # Stuck: marked awake with nothing in the pipe, so no later wake() will write either.
    assert waker.awake and not pending(waker)


def test_with_the_fix_a_wakeup_during_the_drain_is_kept(waker, monkeypatch):
    assert fix.apply()
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


@pytest.fixture
def unchecked(monkeypatch, waker):
    """As in a new process: the fix neither checked nor applied yet."""
    monkeypatch.setattr(fix, "_checked", None)
    return waker


def test_the_fix_is_applied_once_and_only_over_the_handler_it_replaces(unchecked):
    assert fix.apply() and fix.applied()
    assert fix.apply(), "a second call keeps it"
    assert reactor._PipedWaker.handle_read is fix._drain_then_clear
    assert reactor._WakeableLoop.run_loop is fix._poll_longer


def test_another_client_version_is_a_warning_and_the_fix_still_applies(unchecked, monkeypatch, caplog):
    monkeypatch.setattr(fix, "FIXED_VERSION", "5.4.0")
    with caplog.at_level(logging.WARNING, logger=fix.__name__):
        assert fix.apply()
    assert any(r.levelno == logging.WARNING and "written for 5.4.0" in r.getMessage() for r in caplog.records)


def test_a_changed_shipped_handler_is_an_error_and_is_left_alone(unchecked, monkeypatch, caplog):
    monkeypatch.setattr(fix, "SHIPPED_SOURCE_SHA256", "0" * 64)
    with caplog.at_level(logging.WARNING, logger=fix.__name__):
        assert not fix.apply()
    assert reactor._PipedWaker.handle_read is fix.SHIPPED_HANDLE_READ
    assert any(r.levelno == logging.ERROR and "NOT applying" in r.getMessage() for r in caplog.records)


def test_a_changed_shipped_loop_is_an_error_and_neither_part_is_applied(unchecked, monkeypatch, caplog):
    monkeypatch.setattr(fix, "SHIPPED_RUN_LOOP_SHA256", "0" * 64)
    with caplog.at_level(logging.WARNING, logger=fix.__name__):
        assert not fix.apply()
    assert reactor._PipedWaker.handle_read is fix.SHIPPED_HANDLE_READ
    assert reactor._WakeableLoop.run_loop is fix.SHIPPED_RUN_LOOP
    assert any(r.levelno == logging.ERROR and "NOT applying" in r.getMessage() for r in caplog.records)


@pytest.fixture
def loop(unchecked):
    loop = reactor._WakeableLoop({})
    yield loop
    loop.waker.close()


def test_with_the_fix_an_idle_reactor_sleeps_the_longer_poll(loop):
    """The shipped loop wakes every 10 ms: 100 times a second for a client that does nothing."""
    assert fix.apply()
    started = time.monotonic()
    loop.run_loop()
    assert time.monotonic() - started >= fix.POLL_TIMEOUT_S * 0.9


def test_with_the_fix_a_call_still_wakes_the_reactor_at_once(loop):
    """A wake (what every write from a caller's thread does) ends the poll: the pipe is read in that very
    iteration. Had the poll slept through it, the waker would still be marked awake."""
    assert fix.apply()
    loop.wake_loop()
    assert loop.waker.awake
    loop.run_loop()
    assert not loop.waker.awake
