"""Registering an instance with the local Consul agent, and leaving it."""

from __future__ import annotations

import logging
import os
import random
import threading
import time

import consul

from .consul_client import make_consul
from .errors import CONSUL_ERRORS
from .settings import Settings

log = logging.getLogger(__name__)


def service_definition(settings: Settings) -> dict:
    """The service and its HTTP health check, as the agent's register endpoint takes them."""
    base = f"http://{settings.host}:{settings.port}"
    return {
        "name": settings.service_name,
        "service_id": settings.instance_id,
        "address": settings.host,
        "port": settings.port,
        "tags": [f"v{settings.version}"],
        "meta": {"version": settings.version},
        "check": consul.Check.http(
            f"{base}/health",
            interval=settings.check_interval,
            timeout=settings.check_timeout,
            deregister=settings.deregister_after,
        ),
    }


def register(settings: Settings, attempts: int = 5, client: consul.Consul | None = None) -> bool:
    """Register this instance; retry with backoff, because the agent may still be starting."""
    client = client or make_consul(settings.consul)
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            client.agent.service.register(**service_definition(settings))
            log.info("registered %s at %s with Consul %s", settings.instance_id, settings.bind, settings.consul.url)
            return True
        except consul.ACLPermissionDenied as exc:
            log.error("could not register %s: Consul refused the token (%s); CONSUL_HTTP_TOKEN must be set "
                      "and allow service:write on %r", settings.instance_id, str(exc).strip(), settings.service_name)
            return False
        except CONSUL_ERRORS as exc:
            log.warning("registering with Consul failed (attempt %d/%d): %s", attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
    return False


def deregister(settings: Settings, client: consul.Consul | None = None) -> None:
    client = client or make_consul(settings.consul)
    try:
        client.agent.service.deregister(settings.instance_id)
        log.info("deregistered %s from Consul", settings.instance_id)
    except CONSUL_ERRORS as exc:
        # Consul drops it by itself after DeregisterCriticalServiceAfter.
        log.warning("deregistering from Consul failed: %s", exc)


class RegistrationKeeper:
    """Keeps this instance registered: a dev agent that restarted has forgotten every service.

    Runs on a named daemon thread in the gunicorn master. The master forks workers, and a fork taken
    while this thread is inside a Consul call would copy a half-used connection and its locks into the
    worker; `os.register_at_fork` makes every fork wait until the current check is done (each check is
    bounded by the Consul timeout), so workers always start from a clean state. Workers never use it.
    """

    def __init__(self, settings: Settings, interval: float = 2.0):
        self._settings = settings
        self._interval = interval
        self._client = make_consul(settings.consul)
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="registration-keeper", daemon=True)
        os.register_at_fork(
            before=self._busy.acquire,
            after_in_parent=self._busy.release,
            # The child has no keeper thread; its copy of the lock is simply released.
            after_in_child=self._busy.release,
        )

    def start(self) -> "RegistrationKeeper":
        log.info("registration keeper started: checking every ~%.0f s that Consul still knows %s",
                 self._interval, self._settings.instance_id)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._busy:
            pass

    def _registered(self) -> bool:
        return self._settings.instance_id in self._client.agent.services()

    def _run(self) -> None:
        backoff = self._interval
        while not self._stop.wait(backoff * random.uniform(0.8, 1.2)):
            with self._busy:
                if self._stop.is_set():
                    return
                try:
                    if not self._registered():
                        log.warning("%s is not registered with Consul (agent restarted?); registering",
                                    self._settings.instance_id)
                        register(self._settings, attempts=1, client=self._client)
                    backoff = self._interval
                except consul.ACLPermissionDenied:
                    # Retrying fast will not fix a token; say so now and then, without a crash loop.
                    backoff = min(backoff * 2, 30.0)
                    log.error("Consul refuses this instance's token (CONSUL_HTTP_TOKEN); retrying in about "
                              "%.0f s", backoff)
                except CONSUL_ERRORS as exc:
                    backoff = min(backoff * 2, 4.0)
                    log.warning("Consul at %s does not answer (%s); retrying in about %.0f s",
                                self._settings.consul.url, type(exc).__name__, backoff)
