"""The facade's discovery watch: `ServiceWatch` keeps the usable instances of a service current with Consul
blocking queries on a background thread, so a request picks an instance from memory and makes no Consul call.
What a usable instance is lives in servicekit.discovery."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import consul

from servicekit.blocking_watch import BlockingWatch
from servicekit.discovery import Instance, instances_of

log = logging.getLogger(__name__)


# How long the last known instances stay in use while Consul cannot say which pass. An agent restart is
# over in seconds (each instance's keeper registers it again within ~2.4 s and its first check passes
# within the 1 s interval; docs/RELIABILITY.md has every instance passing 3.1 to 4.8 s after the agent
# is back), and a healthy watch hears from Consul at least once per 30 s blocking wait, so half a minute
# without a usable answer is an outage, not a hiccup: from then on the facade answers 503 rather than
# guessing, and /health has shown `stale_since` all along.
STALE_LIMIT = 30.0

# Told what a watch knows after each answer from Consul and each failed query: (service, instances a request
# would pick from, whether Consul answered, the ids of every instance Consul listed in its last answer, in
# any state; None before the first). The facade's metrics (servicekit.metrics.observe_watch) and what it
# keeps per instance, which it forgets for the instances that left Consul.
Observer = Callable[[str, int, bool, frozenset[str] | None], None]


@dataclass(frozen=True)
class _Cache:
    """What the watch knows, replaced as a whole so a request thread never reads half an update."""

    instances: tuple[Instance, ...] = ()
    # Set while the instances are the last known ones rather than Consul's current answer.
    stale_since: float | None = None  # time.monotonic()
    stale_since_wall: float | None = None  # time.time(), for people
    # Why they are stale: Consul is unreachable, or an agent restarted and has not seen them register yet.
    stale_reason: str | None = None
    # Every instance Consul listed, critical ones included: an instance missing here left Consul.
    registered: frozenset[str] | None = None


class ServiceWatch:
    """The usable instances of one service (passing, or in warning with their warning weight; never
    critical), kept current by a named daemon thread.

    The thread runs Consul blocking queries (index + wait): the agent answers as soon as the set changes,
    or after `wait`. An answer with no passing instance empties the cache: requests get a 503 at once
    instead of trying instances Consul knows are critical. Only when Consul cannot say (it is
    unreachable, or its index went backwards because the agent restarted and has forgotten every
    service until they register again) do the last known instances stay in use, for at most
    `stale_limit` seconds; `status()` says since when.
    """

    def __init__(
        self,
        client: consul.Consul,
        service: str,
        wait: str = "30s",
        stale_limit: float = STALE_LIMIT,
        observe: Observer | None = None,
    ):
        self.service = service
        self._observe = observe
        self._client = client
        self._wait = wait
        self._stale_limit = stale_limit
        self._cache = _Cache()
        self._loaded = threading.Event()
        self._updated_at: float | None = None
        self._watch = BlockingWatch(
            f"watch-{service}",
            service,
            lambda index: self._client.health.service(service, index=index, wait=self._wait),
            lambda index, entries: self._answered(
                index, instances_of(entries), frozenset(e["Service"]["ID"] for e in entries)
            ),
            refused=f"Consul refused to list {service} (check CONSUL_HTTP_TOKEN's policy)",
            unreachable=f"Consul is unreachable while watching {service}",
            failed=self._failed,
        )

    def start(self) -> ServiceWatch:
        self._watch.start()
        return self

    def stop(self, timeout: float = 0.0) -> bool:
        """Stop watching. A blocking query in flight is not cut short; the daemon thread ends after it."""
        return self._watch.stop(timeout)

    def instances(self, timeout: float = 0.0) -> tuple[Instance, ...]:
        """The current instances. Right after start, wait up to `timeout` for Consul's first answer."""
        if timeout and not self._loaded.is_set():
            self._loaded.wait(timeout)
        return self._usable(self._cache)

    def _usable(self, cache: _Cache) -> tuple[Instance, ...]:
        if cache.stale_since is not None and time.monotonic() - cache.stale_since > self._stale_limit:
            return ()
        return cache.instances

    def status(self) -> dict:
        cache = self._cache
        return {
            "instances": [i.id for i in self._usable(cache)],
            "consul": self._watch.consul_status,
            "stale_since": None if cache.stale_since_wall is None else _iso(cache.stale_since_wall),
            "updated_s_ago": None if self._updated_at is None else round(time.monotonic() - self._updated_at, 1),
        }

    def _keep_stale(self, reason: str) -> None:
        """Keep serving the last known instances, because Consul cannot say which pass right now."""
        cache = self._cache
        if cache.stale_since is None:
            if cache.instances:
                log.warning(
                    "%s; serving %s from the %d last known instances for at most %.0f s",
                    reason,
                    self.service,
                    len(cache.instances),
                    self._stale_limit,
                )
            self._cache = replace(
                cache, stale_since=time.monotonic(), stale_since_wall=time.time(), stale_reason=reason
            )
        elif cache.instances and not self._usable(cache):
            log.error("%s for %.0f s; dropping the last known %s instances", reason, self._stale_limit, self.service)
            self._cache = replace(cache, instances=(), stale_reason=reason)
        else:
            self._cache = replace(cache, stale_reason=reason)

    def _answered(self, index: int, found: tuple[Instance, ...], registered: frozenset[str]) -> None:
        restarted = self._watch.index.answered(index)
        cache = self._cache
        if restarted:
            log.info("Consul's index for %s went backwards (the agent restarted); starting over", self.service)
        if not found and cache.instances and (restarted or cache.stale_reason == _RESTARTED):
            # A restarted agent knows nothing until the instances register again; nor does any answer
            # until one of them has passed its first check.
            self._keep_stale(_RESTARTED)
        else:
            if {(i.id, i.weight) for i in found} != {(i.id, i.weight) for i in self._usable(cache)}:
                if found:
                    listed = ", ".join(sorted(f"{i.id} (weight {i.weight})" for i in found))
                    log.info("%s instances: %s", self.service, listed)
                else:
                    log.error("Consul reports no passing %s instance; requests that need one get 503", self.service)
            self._cache = _Cache(found, registered=registered)
        self._updated_at = time.monotonic()
        self._loaded.set()
        self._tell(answered=True)

    def _tell(self, answered: bool) -> None:
        if self._observe is not None:
            cache = self._cache
            self._observe(self.service, len(self._usable(cache)), answered, cache.registered)

    def _failed(self, denied: bool) -> None:
        self._keep_stale("Consul refuses to answer" if denied else "Consul is unreachable")
        self._tell(answered=False)


_RESTARTED = "the Consul agent restarted"


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="seconds")


class Discovery:
    """One watch per service the caller depends on."""

    def __init__(
        self,
        client: consul.Consul,
        services: list[str],
        wait: str = "30s",
        stale_limit: float = STALE_LIMIT,
        observe: Observer | None = None,
    ):
        self._watches = {name: ServiceWatch(client, name, wait, stale_limit, observe) for name in services}

    def start(self) -> Discovery:
        for watch in self._watches.values():
            watch.start()
        return self

    def close(self, timeout: float = 0.0) -> bool:
        """Stop every watch; wait up to `timeout` in all for their threads. True when all are over."""
        deadline = time.monotonic() + timeout
        for watch in self._watches.values():
            watch.stop()
        return all([watch.stop(max(0.0, deadline - time.monotonic())) for watch in self._watches.values()])

    def instances(self, service: str, timeout: float = 0.0) -> tuple[Instance, ...]:
        return self._watches[service].instances(timeout)

    def status(self) -> dict:
        return {name: watch.status() for name, watch in self._watches.items()}
