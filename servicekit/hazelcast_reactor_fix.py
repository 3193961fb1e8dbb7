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

This replaces a private method of the library, so `apply()` checks first: the installed client's version
(a warning when it is not the one the fix was read against) and the shipped handler's source (an error, and
no fix, when it changed: the race may be gone, or the replacement may now drop something new).
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

# The client version the fix was read against, and the SHA-256 of the shipped handler's source there.
FIXED_VERSION = "5.5.0"
SHIPPED_SOURCE_SHA256 = "a2c4cae41adc1f7fb114f75cf492e16a93d36a54d85fe1f6ef4ee6cf98f9f70b"

# The handler as the client ships it, taken at import (before any fix), so tests can compare against it.
SHIPPED_HANDLE_READ = reactor._PipedWaker.handle_read

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
            "(docs/upstream/hazelcast-python-client-lost-wakeup.md)", version, FIXED_VERSION,
        )
    if source_sha256(SHIPPED_HANDLE_READ) != SHIPPED_SOURCE_SHA256:
        log.error(
            "hazelcast-python-client %s ships another reactor._PipedWaker.handle_read than the one the "
            "reactor fix replaces; NOT applying it. If the lost wakeup is still there, calls wait out "
            "the reactor's 10 ms poll after a burst (docs/upstream/hazelcast-python-client-lost-wakeup.md)",
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
        if reactor._PipedWaker.handle_read is not _drain_then_clear:
            reactor._PipedWaker.handle_read = _drain_then_clear
        return True


def applied() -> bool:
    return reactor._PipedWaker.handle_read is _drain_then_clear
