"""servicekit.background: the one loop every background thread runs, and the backoff every retry uses."""

from __future__ import annotations

import logging
import threading

import pytest
from tenacity import RetryCallState

from devstack import eventually
from servicekit import background
from servicekit.background import BackgroundLoop


def test_a_step_that_raises_once_is_logged_and_the_loop_keeps_running(caplog, monkeypatch):
    monkeypatch.setattr(background, "FIRST_RETRY", 0.01)
    calls = []
    ran_again = threading.Event()

    def step():
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("unexpected")
        ran_again.set()
        loop.wait(0.01)

    with caplog.at_level(logging.ERROR, logger=background.__name__):
        loop = BackgroundLoop("test-loop", step).start()
        try:
            assert ran_again.wait(5), "the loop died with its first exception"
        finally:
            assert loop.stop(timeout=5)
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "test-loop: unexpected KeyError" in record.getMessage() and record.exc_info


def test_stop_ends_a_waiting_loop_at_once_and_joins_it():
    loop = BackgroundLoop("test-waiting", lambda: loop.wait(60)).start()
    assert loop.is_alive() and loop.name == "test-waiting"
    assert [t for t in threading.enumerate() if t.name == "test-waiting"][0].daemon
    assert loop.stop(timeout=5)
    assert not loop.is_alive()


def test_a_step_that_returns_false_ends_the_loop():
    loop = BackgroundLoop("test-once", lambda: False).start()

    def ended():
        assert not loop.is_alive()

    eventually(ended, timeout=5)


def test_a_retried_call_gives_up_with_its_error_once_the_loop_is_stopping():
    loop = BackgroundLoop("test-retry", lambda: False)
    attempts = []

    def failing():
        attempts.append(1)
        if len(attempts) == 2:
            loop.stop()
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        loop.retrying((ConnectionError,))(failing)
    assert len(attempts) == 2


@pytest.mark.parametrize(
    ("attempt", "low", "high"), [(1, 0.5, 1.0), (2, 1.0, 1.5), (3, 2.0, 2.5), (4, 3.0, 3.5), (9, 3.0, 3.5)]
)
def test_the_backoff_doubles_from_half_a_second_to_three_with_jitter(attempt, low, high):
    state = RetryCallState(None, None, (), {})
    state.attempt_number = attempt
    waits = [background.backoff()(state) for _ in range(50)]
    assert all(low <= w <= high for w in waits) and len(set(waits)) > 1
