"""Finding passing instances of a service through Consul.

`passing_instances` asks once. `ServiceWatch` keeps the answer current with Consul blocking queries on a
background thread, so a request picks an instance from memory and makes no Consul call.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

import consul

from .registry import CONSUL_ERRORS

log = logging.getLogger(__name__)


class DiscoveryError(RuntimeError):
    """Consul could not be asked."""


@dataclass(frozen=True)
class Instance:
    id: str
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def _instances(entries: list[dict]) -> tuple[Instance, ...]:
    return tuple(
        Instance(
            id=entry["Service"]["ID"],
            # An empty service address means "the node's address", as in Consul's own DNS answers.
            address=entry["Service"]["Address"] or entry["Node"]["Address"],
            port=entry["Service"]["Port"],
        )
        for entry in entries
    )


def passing_instances(client: consul.Consul, service: str) -> list[Instance]:
    try:
        _, entries = client.health.service(service, passing=True)
    except CONSUL_ERRORS as exc:
        raise DiscoveryError(f"Consul is unreachable: {exc}") from exc
    return list(_instances(entries))


def shuffled(instances: list[Instance] | tuple[Instance, ...]) -> list[Instance]:
    """A random order: the first is the random pick, the rest are the fallbacks."""
    return random.sample(list(instances), len(instances))


class ServiceWatch:
    """The passing instances of one service, kept current by a named daemon thread.

    The thread runs Consul blocking queries (index + wait): the agent answers as soon as the set changes,
    or after `wait`. When Consul is unreachable, or suddenly reports no passing instance at all (a dev
    agent that restarted and has not seen the instances re-register yet), the last known instances stay
    in use and the change is logged; the facade retries on another instance if one of them is gone.
    """

    def __init__(self, client: consul.Consul, service: str, wait: str = "30s"):
        self.service = service
        self._client = client
        self._wait = wait
        self._instances: tuple[Instance, ...] = ()
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._consul_error: str | None = None
        self._updated_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{service}", daemon=True)

    def start(self) -> "ServiceWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def instances(self, timeout: float = 0.0) -> tuple[Instance, ...]:
        """The current instances. Right after start, wait up to `timeout` for Consul's first answer."""
        if timeout and not self._loaded.is_set():
            self._loaded.wait(timeout)
        return self._instances

    def status(self) -> dict:
        return {
            "instances": [i.id for i in self._instances],
            "consul": "unreachable: " + self._consul_error if self._consul_error else "ok",

            "updated_s_ago": None if self._updated_at is None else round(time.monotonic() - self._updated_at, 1),
        }

    def _apply(self, found: tuple[Instance, ...]) -> None:
        if not found and self._instances:
            log.warning(
                "Consul reports no passing %s; keeping the %d last known", self.service, len(self._instances)
            )
        elif {i.id for i in found} != {i.id for i in self._instances}:
            log.info("%s instances: %s", self.service, ", ".join(sorted(i.id for i in found)) or "none")
            self._instances = found
        self._updated_at = time.monotonic()
        self._loaded.set()

    def _run(self) -> None:
        index = None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                new_index, entries = self._client.health.service(
                    self.service, passing=True, index=index, wait=self._wait
                )
            except CONSUL_ERRORS as exc:
                if self._consul_error is None:
                    if isinstance(exc, consul.ACLPermissionDenied):
                        log.error("Consul refused to list %s (check CONSUL_HTTP_TOKEN's policy); serving "
                                  "from the last known instances", self.service)
                    else:
                        log.warning("Consul is unreachable; serving %s from the last known instances: %s",
                                    self.service, exc)
                self._consul_error = (
                    "permission denied" if isinstance(exc, consul.ACLPermissionDenied) else type(exc).__name__
                )
                # Jitter keeps many workers from hammering an agent that just came back.
                self._stop.wait(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 3.0)
                continue
            if self._consul_error is not None:
                log.info("Consul answers again; watching %s", self.service)
                self._consul_error = None
            backoff = 0.5
            # Consul's rule for blocking queries: an index that went backwards (the agent restarted)
            # means start over; an index of 0 or less is never used as-is.
            new_index = int(new_index or 0)
            if index is not None and new_index < index:
                new_index = 0
            index = max(new_index, 1) if new_index else None
            self._apply(_instances(entries))


class Discovery:
    """One watch per service the caller depends on."""

    def __init__(self, client: consul.Consul, services: list[str], wait: str = "30s"):
        self._watches = {name: ServiceWatch(client, name, wait) for name in services}

    def start(self) -> "Discovery":
        for watch in self._watches.values():
            watch.start()
        return self

    def close(self) -> None:
        for watch in self._watches.values():
            watch.stop()

    def instances(self, service: str, timeout: float = 0.0) -> tuple[Instance, ...]:
        return self._watches[service].instances(timeout)

    def status(self) -> dict:
        return {name: watch.status() for name, watch in self._watches.items()}
