"""Bounded load on loopback, with every outcome kept: the tests' fault loads, the soak's steady rate and
the figure scripts' measurements."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from devstack.consul_agent import check_status
from devstack.processes import eventually
from devstack.stack import Stack


@dataclass
class Outcome:
    seq: int
    status: int | None
    body: dict | None
    error: str | None
    at: float  # time.monotonic() when the answer (or the error) came
    started: float = 0.0  # time.monotonic() when the request was sent

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400

    @property
    def kind(self) -> str:
        """The status code, or the name of the exception that took its place ("ConnectionError")."""
        return str(self.status) if self.error is None else self.error.split(":", 1)[0]

    @property
    def seconds(self) -> float:
        return self.at - self.started


class Load:
    """Bounded load on loopback: `clients` threads call `send(session, seq)` in a loop until the block
    ends, `max_requests` were sent, or `max_seconds` passed, whichever comes first.

        with Load(lambda s, n: s.post(url, json={"msg": f"m{n}"}, timeout=10)) as load:
            ...break something...
        assert load.failures() == []

    Each client waits `pause` after each answer; with `rate` (requests a second over all clients) it
    paces instead: a request starts 1/rate * clients after the previous one of its client started, or at
    once when that one took longer (a stall is not followed by a burst).
    """

    def __init__(
        self,
        send: Callable[[requests.Session, int], requests.Response],
        clients: int = 4,
        max_requests: int = 5000,
        max_seconds: float = 60.0,
        pause: float = 0.005,
        keep_alive: bool = True,
        rate: float | None = None,
    ):
        self._send = send
        self._clients = clients
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._pause = pause
        self._interval = clients / rate if rate else None
        self._keep_alive = keep_alive
        self._deadline = time.monotonic() + max_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(clients)]

    def start(self) -> Load:
        self._deadline = time.monotonic() + self._max_seconds
        for thread in self._threads:
            thread.start()
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the load now: no request starts after this; those under way are waited for."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def finish(self, timeout: float | None = None) -> None:
        """Wait until the load ends by itself (`max_requests` sent or `max_seconds` passed)."""
        deadline = time.monotonic() + (self._max_seconds + 60 if timeout is None else timeout)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in self._threads), "the load did not finish"

    def _next(self) -> int | None:
        with self._lock:
            if self._seq >= self._max_requests or time.monotonic() > self._deadline:
                return None
            self._seq += 1
            return self._seq

    def _run(self) -> None:
        session = requests.Session()
        if not self._keep_alive:
            session.headers["Connection"] = "close"
        while not self._stop.is_set():
            seq = self._next()
            if seq is None:
                return
            started = time.monotonic()
            try:
                response = self._send(session, seq)
                try:
                    body = response.json()
                except ValueError:
                    body = None
                outcome = Outcome(seq, response.status_code, body, None, time.monotonic(), started)
            except requests.RequestException as exc:
                outcome = Outcome(seq, None, None, f"{type(exc).__name__}: {exc}", time.monotonic(), started)
            with self._lock:
                self.outcomes.append(outcome)
            if self._interval is None:
                self._stop.wait(self._pause)
            else:
                self._stop.wait(max(0.0, started + self._interval - time.monotonic()))

    def wait_for(self, count: int, timeout: float = 30.0, ok: bool = False) -> None:
        """Block until at least `count` requests completed (succeeded, with `ok`), so a fault lands in the
        middle of the load."""
        eventually(lambda: self._assert_done(count, ok), timeout)

    def _assert_done(self, count: int, ok: bool) -> None:
        done = self.succeeded() if ok else self.snapshot()
        assert len(done) >= count, f"{len(done)} of {count} requests {'succeeded' if ok else 'done'}"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.snapshot() if not o.ok]

    def succeeded(self) -> list[Outcome]:
        return [o for o in self.snapshot() if o.ok]

    def answered(self, status: int) -> list[Outcome]:
        """The requests answered with `status` (201: the POSTs the facade acknowledged)."""
        return [o for o in self.snapshot() if o.status == status]


def passing_to_first_request(stack: Stack, load: Load) -> float:
    """Start a logging instance under `load`; seconds from Consul reporting it passing to the first
    acknowledged POST it served."""
    client = stack.agent.client()
    new = stack.start("logging-service")
    stack.logging.append(new)

    def passing_since():
        assert check_status(client, new.instance_id) == "passing"
        return time.monotonic()

    passing_at = eventually(passing_since, timeout=30, interval=0.01)

    def first_request():
        hits = [
            o.at for o in load.snapshot() if o.ok and o.body is not None and o.body.get("logged_by") == new.instance_id
        ]
        assert hits, "no request reached the new instance yet"
        return min(hits)

    return eventually(first_request, timeout=10, interval=0.01) - passing_at
