"""How many retries a caller may add: a share of its recent calls, so a slow tier is not hit harder.

Finagle's RetryBudget and gRPC's retry throttling have the same idea. Without it, every call that times
out at one instance is sent to another while the first one may still be working on it: a tier slowed by
load gets more load, and a slow instance turns one request into several.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

# One count per second of the window: the window slides a second at a time, in constant memory.
_SLOT_SECONDS = 1.0


class RetryBudget:
    """At most `ratio` retries per first try over the last `window` seconds, and at least `minimum`
    retries in any window, so a lone failure on a quiet caller is still retried. Thread-safe; one per
    process (each gunicorn worker keeps its own), one per service called."""

    def __init__(
        self,
        ratio: float = 0.1,
        minimum: int = 3,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._ratio = ratio
        self._minimum = minimum
        self._slots = max(1, math.ceil(window / _SLOT_SECONDS))
        self._clock = clock
        self._lock = threading.Lock()
        # slot number -> [first tries, retries]
        self._counts: dict[int, list[int]] = {}

    def _slot(self) -> int:
        now = int(self._clock() // _SLOT_SECONDS)
        for old in [s for s in self._counts if s <= now - self._slots]:
            del self._counts[old]
        return now

    def _totals(self) -> tuple[int, int]:
        return sum(c[0] for c in self._counts.values()), sum(c[1] for c in self._counts.values())

    def first_try(self) -> None:
        """Count a call's first attempt: each one earns `ratio` of a retry."""
        with self._lock:
            self._counts.setdefault(self._slot(), [0, 0])[0] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the window allows it; False when the budget is spent."""
        with self._lock:
            slot = self._slot()
            tries, retries = self._totals()
            if retries + 1 > max(self._minimum, self._ratio * tries):
                return False
            self._counts.setdefault(slot, [0, 0])[1] += 1
            return True

    def status(self) -> dict:
        with self._lock:
            self._slot()
            tries, retries = self._totals()
        return {"first_tries": tries, "retries": retries}
