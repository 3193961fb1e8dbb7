"""Outlier ejection: an instance whose calls keep failing leaves this process's rotation for a while.

Consul's check asks /health once a second; an instance can pass it and still fail every real call (a
broken dependency path, a bad deploy of one route). The caller sees that first: after
CONSECUTIVE_FAILURES failed calls in a row (5xx, resets, timeouts: not a 4xx, which is the caller's
contract, not the instance's health) the instance is ejected for BASE_EJECTION seconds, twice as long on
each ejection that follows, up to MAX_EJECTION. When its time is up it is back on its own; it still owes
its failures, so the first call after that decides: a success clears its count, a failure ejects it again
at once, for twice as long. This is Envoy's consecutive-5xx outlier detection (and its max ejection
percent: never so many out that the rest is swamped, never all of them).

The state is per process (one per gunicorn worker): no sharing, no coordination, like the random pick.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from servicekit.discovery import Instance

log = logging.getLogger(__name__)

CONSECUTIVE_FAILURES = 3
# Seconds: 2, 4, 8, 16, 30, 30... Longer than one Consul check interval, so a dead instance is usually
# gone from the cache before it is let back in; short enough that a hiccup costs little capacity.
BASE_EJECTION = 2.0
MAX_EJECTION = 30.0
# At most this share of a service's instances is kept out (at least one, never all of them): when more
# fail at once, the fault is more likely in the caller or in what they share, and capacity matters more.
MAX_EJECTED_SHARE = 0.5


@dataclass
class _Record:
    failures: int = 0  # in a row, since the last success
    ejections: int = 0  # in a row, since the instance last served well for MAX_EJECTION
    ejected_at: float | None = None  # while ejected
    ejected_until: float = 0.0
    back_since: float = 0.0


class OutlierDetector:
    """Consecutive failures per instance of one service, and which instances are ejected. Thread-safe."""

    def __init__(
        self,
        service: str,
        consecutive_failures: int = CONSECUTIVE_FAILURES,
        base_ejection: float = BASE_EJECTION,
        max_ejection: float = MAX_EJECTION,
        max_ejected_share: float = MAX_EJECTED_SHARE,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.service = service
        self._consecutive = consecutive_failures
        self._base = base_ejection
        self._max = max_ejection
        self._share = max_ejected_share
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}

    def succeeded(self, instance_id: str) -> None:
        with self._lock:
            record = self._records.get(instance_id)
            if record is None:
                return
            now = self._clock()
            self._still_ejected(instance_id, record, now)
            record.failures = 0
            if record.ejected_at is None and now - record.back_since >= self._max:
                # Served well for a whole longest ejection: its next ejection starts short again.
                del self._records[instance_id]

    def failed(self, instance_id: str, reason: str) -> bool:
        """Count a failed call; True when it ejects the instance."""
        with self._lock:
            record = self._records.setdefault(instance_id, _Record())
            now = self._clock()
            self._still_ejected(instance_id, record, now)
            record.failures += 1
            if record.ejected_at is not None or record.failures < self._consecutive:
                return False
            seconds = min(self._base * 2**record.ejections, self._max)
            record.ejections += 1
            record.ejected_at, record.ejected_until = now, now + seconds
            log.info(
                "ejected %s from the %s rotation for %.1f s: %d failures in a row, the last %s",
                instance_id,
                self.service,
                seconds,
                record.failures,
                reason,
            )
            return True

    def usable(self, instances: Sequence[Instance]) -> tuple[Instance, ...]:
        """The instances to pick from: those not ejected, plus ejected ones past the cap (the most recently
        ejected first), so at most MAX_EJECTED_SHARE of them (at least one, never all) stay out."""
        with self._lock:
            if not self._records:
                return tuple(instances)
            now = self._clock()
            ejected = []
            for instance in instances:
                record = self._records.get(instance.id)
                if record is not None and self._still_ejected(instance.id, record, now):
                    ejected.append((record.ejected_at, instance.id))
        if not ejected:
            return tuple(instances)
        limit = min(len(instances) - 1, max(1, math.floor(self._share * len(instances))))
        kept_out = {instance_id for _, instance_id in sorted(ejected)[: max(limit, 0)]}
        return tuple(i for i in instances if i.id not in kept_out)

    def forget_all_but(self, registered: Collection[str]) -> None:
        """Drop what is known of the instances not in `registered` (those Consul lists): one that left is
        not called again, and one that comes back (a restart, under the same id) starts afresh."""
        with self._lock:
            for instance_id in [i for i in self._records if i not in registered]:
                del self._records[instance_id]

    def ejected(self) -> list[str]:
        with self._lock:
            now = self._clock()
            return sorted(i for i, r in list(self._records.items()) if self._still_ejected(i, r, now))

    def _still_ejected(self, instance_id: str, record: _Record, now: float) -> bool:
        """Whether the instance is still ejected; lets it back in (and says so) once its time is up."""
        if record.ejected_at is None:
            return False
        if now < record.ejected_until:
            return True
        log.info(
            "%s is back in the %s rotation after %.1f s ejected",
            instance_id,
            self.service,
            record.ejected_until - record.ejected_at,
        )
        record.ejected_at = None
        record.back_since = now
        return False
