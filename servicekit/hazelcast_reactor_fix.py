"""A fix for a lost wakeup in hazelcast-python-client's reactor, fenced: applied once per process, and only
over the handler it was written against (docs/upstream/hazelcast-python-client-lost-wakeup.md is the report
to file upstream).

The client's reactor thread sleeps in poll() for up to 10 ms unless a caller wakes it through a pipe;
`_PipedWaker.wake()` writes a byte only while `awake` is False. The shipped `handle_read` clears `awake`
first and drains the pipe second: a wake() landing in between writes a byte that the drain swallows,
leaving `awake` True over an empty pipe. From then on no call wakes the reactor, and every Hazelcast
operation waits out the 10 ms poll timeout: after the first burst of concurrent requests, a logging_svc
POST went from 2 ms to 11 ms for good (docs/BENCHMARKS.md). Draining first and clearing second can only
cost a spurious wakeup.

With wakeups kept, the 10 ms poll itself is only a cost: it wakes an idle client 100 times a second, 1.2 % of
a core per idle gunicorn worker (measured: 1.17 % against 0.20 % with a 250 ms poll, one client, 30 s idle;
hazelcast/hazelcast-python-client#83), a tenth of a core for one idle stack of ./scripts/up. A call wakes the
reactor through the pipe, and a socket that has data ends the poll, so a longer poll delays only the client's
timers (heartbeats, retry pauses, and its invocation cleaner, which runs every 100 ms anyway): the poll here
lasts POLL_TIMEOUT_S. It is part of the same fix and the same fence, never applied without the handler above.

These replace private methods of the library, so `apply()` checks first: the installed client's version
(a warning when it is not the one the fix was read against) and the shipped methods' source (an error, and
no fix, when either changed: the race may be gone, or the replacement may now drop something new).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import threading

import hazelcast
from hazelcast import reactor

log = logging.getLogger(__name__)

# The client version the fix was read against, and the SHA-256 of the shipped methods' source there.
FIXED_VERSION = "5.5.0"
SHIPPED_SOURCE_SHA256 = "a2c4cae41adc1f7fb114f75cf492e16a93d36a54d85fe1f6ef4ee6cf98f9f70b"
SHIPPED_RUN_LOOP_SHA256 = "6558cbb79181bc11a3aba901ff14be2204b867012a1838be688e865323a11a0b"

# The methods as the client ships them, taken at import (before any fix), so tests can compare against them.
SHIPPED_HANDLE_READ = reactor._PipedWaker.handle_read
SHIPPED_RUN_LOOP = reactor._WakeableLoop.run_loop

# How long the reactor sleeps in poll() when nothing wakes it (shipped: 10 ms).
POLL_TIMEOUT_S = 0.1

_lock = threading.Lock()
_checked: bool | None = None


def _drain_then_clear(waker) -> None:
    """`_PipedWaker.handle_read`, in the order that loses no wakeup: drain the pipe, then clear `awake`."""
    try:
        while len(os.read(waker._read_fd, 4096)) == 4096:
            pass
    except OSError:
        pass
    waker.awake = False


def _poll_longer(loop) -> None:
    """`_WakeableLoop.run_loop` with a poll of POLL_TIMEOUT_S instead of 10 ms."""
    reactor.asyncore.loop(timeout=POLL_TIMEOUT_S, use_poll=True, map=loop._map, count=1)


def source_sha256(function) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def _safe_to_apply() -> bool:
    """Whether the shipped handler is the one the fix replaces; says so loudly when something changed."""
    version = getattr(hazelcast, "__version__", "unknown")
    if version != FIXED_VERSION:
        log.warning(
            "hazelcast-python-client is %s, the reactor fix was written for %s: check that "
            "reactor._PipedWaker.handle_read still clears `awake` before it drains the pipe "
            "(docs/upstream/hazelcast-python-client-lost-wakeup.md)",
            version,
            FIXED_VERSION,
        )
    if (source_sha256(SHIPPED_HANDLE_READ), source_sha256(SHIPPED_RUN_LOOP)) != (
        SHIPPED_SOURCE_SHA256,
        SHIPPED_RUN_LOOP_SHA256,
    ):
        log.error(
            "hazelcast-python-client %s ships another reactor._PipedWaker.handle_read or "
            "_WakeableLoop.run_loop than the ones the reactor fix replaces; NOT applying it. If the lost "
            "wakeup is still there, calls wait out the reactor's 10 ms poll after a burst "
            "(docs/upstream/hazelcast-python-client-lost-wakeup.md)",
            version,
        )
        return False
    return True


def apply() -> bool:
    """Install the fix, once per process; True when it is in place. Idempotent and thread-safe."""
    global _checked
    with _lock:
        if _checked is None:
            _checked = _safe_to_apply()
        if not _checked:
            return False
        # The wakeup first: a longer poll over a lost wakeup would make every call wait it out.
        if reactor._PipedWaker.handle_read is not _drain_then_clear:
            reactor._PipedWaker.handle_read = _drain_then_clear
        if reactor._WakeableLoop.run_loop is not _poll_longer:
            reactor._WakeableLoop.run_loop = _poll_longer
        return True


def applied() -> bool:
    return reactor._PipedWaker.handle_read is _drain_then_clear and reactor._WakeableLoop.run_loop is _poll_longer
