"""The gunicorn master's registration keeper (servicekit/registration.py), with a stand-in for the Consul client."""

from __future__ import annotations

import os
import threading
import time

import pytest

from servicekit import registration
from servicekit.settings import Settings

SETTINGS = Settings.from_env("logging-service", 8081, env={})
# Long enough that a fork which does not wait returns well before the call ends, even on a loaded machine.
CALL_SECONDS = 0.5


class SlowAgent:
    """Answers `agent.services()` after CALL_SECONDS, as an agent that is slow to answer does."""

    def __init__(self):
        self.agent = self
        self.entered = threading.Event()
        self.finished = threading.Event()

    def services(self) -> dict:
        self.entered.set()
        time.sleep(CALL_SECONDS)
        self.finished.set()
        return {SETTINGS.instance_id: {}}


@pytest.fixture
def slow_keeper(monkeypatch):
    consul = SlowAgent()
    monkeypatch.setattr(registration, "make_consul", lambda settings: consul)
    keeper = registration.RegistrationKeeper(SETTINGS, interval=0.01).start()
    yield keeper, consul
    keeper.stop()


def test_a_fork_waits_until_the_keepers_consul_call_is_over(slow_keeper):
    _, consul = slow_keeper
    assert consul.entered.wait(5), "the keeper never called Consul"
    pid = os.fork()
    if pid == 0:
        # The child: the fork hooks ran; nothing else to do here.
        os._exit(0)
    # A worker forked mid-call would start with the master's half-used connection and its locks.
    finished_before_the_fork_returned = consul.finished.is_set()
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, "the forked child did not exit: its copy of the lock is held"
        time.sleep(0.01)
    assert finished_before_the_fork_returned


class SurprisingAgent:
    """Raises something no Consul call should raise, once; then answers that the instance is missing."""

    def __init__(self):
        self.agent = self
        self.service = self
        self.calls = 0
        self.registered = threading.Event()

    def services(self) -> dict:
        self.calls += 1
        if self.calls == 1:
            raise TypeError("a surprise")
        return {}

    def register(self, **definition) -> None:
        self.registered.set()


def test_an_unexpected_error_in_the_keeper_is_logged_and_the_keeper_keeps_going(monkeypatch, caplog):
    consul = SurprisingAgent()
    monkeypatch.setattr(registration, "make_consul", lambda settings: consul)
    keeper = registration.RegistrationKeeper(SETTINGS, interval=0.01).start()
    try:
        assert consul.registered.wait(5), "the keeper died with its first surprise"
    finally:
        keeper.stop()
    assert any("registration-keeper: unexpected TypeError" in r.getMessage() for r in caplog.records)
