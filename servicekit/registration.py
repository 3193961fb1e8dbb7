"""Registering an instance with the local Consul agent, and leaving it."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import consul
from consul.callback import CB
from tenacity import RetryCallState

from . import background, metrics_files
from .background import BackgroundLoop
from .consul_client import make_consul
from .errors import CONSUL_ERRORS
from .settings import Settings, host_name

log = logging.getLogger(__name__)

# What the master last found wrong with its registration, for /health. The master checks at every
# registration and now and then (the keeper), long after the workers forked, so it writes what it found to a
# file in the instance's own directory (metrics_files: the workers inherit its path) and the workers read it.
WARNINGS_FILE = "registration-warnings.json"
# How often the keeper asks again: an agent alone at boot may join its cluster later.
ADDRESS_RECHECK_SECONDS = 10.0
_warnings: tuple[str, ...] = ()
_check_failed = False


def _warnings_path() -> Path | None:
    directory = os.environ.get(metrics_files.ENV)
    return Path(directory) / WARNINGS_FILE if directory else None


def warnings() -> tuple[str, ...]:
    """The master's latest finding: from its file in a gunicorn worker, from memory elsewhere."""
    path = _warnings_path()
    if path is None:
        return _warnings
    try:
        return tuple(json.loads(path.read_text()))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as exc:
        log.warning("could not read the registration warnings from %s: %s", path, exc)
        return ()


def _publish(found: tuple[str, ...]) -> None:
    global _warnings
    if found == _warnings:
        return
    _warnings = found
    path = _warnings_path()
    if path is None:
        return
    # Written whole (a rename): a worker never reads half of it.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{WARNINGS_FILE}.")
        with os.fdopen(fd, "w") as f:
            json.dump(list(found), f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the registration warnings to %s: %s", path, exc)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return ipaddress.ip_address("127.0.0.1") if host_name(host) == "localhost" else None


def agent_members(client: consul.Consul) -> list[dict]:
    """/v1/agent/members with the client's token: py-consul's agent.members() (and agent.self()) send none,
    and under default-deny ACLs the agent then lists no member at all (and refuses /self)."""
    return client.http.get(CB.json(), "/v1/agent/members", headers=client.prepare_headers())


def agent_self(client: consul.Consul) -> dict:
    return client.http.get(CB.json(), "/v1/agent/self", headers=client.prepare_headers())


def loopback_warning(settings: Settings, client: consul.Consul) -> str | None:
    """A warning when this instance registers a loopback address with an agent whose LAN pool has other
    nodes: facades on those hosts would call that address, their own loopback, and reach their own port.

    Not when the address is the agent's own LAN address: the simulated hosts (./scripts/hosts) give each
    host a 127.100.0.x address on its link, not on its loopback, and the other hosts reach it."""
    address = _address(settings.host)
    if address is None or not address.is_loopback:
        return None
    nodes = len(agent_members(client))
    if nodes <= 1 or _address(agent_self(client)["Member"]["Addr"]) == address:
        return None
    return (
        f"registered at {settings.host} with an agent in a {nodes}-node cluster: "
        "facades on other hosts call their own port"
    )


def check_address(settings: Settings, client: consul.Consul) -> None:
    """At each registration and now and then after (the keeper): two calls to the local agent, each bounded
    by the Consul timeout. Says so in the log when the finding changes, not at every check."""
    global _check_failed
    try:
        warning = loopback_warning(settings, client)
    except CONSUL_ERRORS as exc:
        if not _check_failed:
            log.warning(
                "could not ask Consul how many nodes its cluster has (%s; the token needs agent:read and "
                "node:read); the registered address is unchecked",
                exc,
            )
        _check_failed = True
        return
    _check_failed = False
    found = () if warning is None else (warning,)
    if found != _warnings:
        if warning is not None:
            log.warning("%s; set SERVICE_HOST to this host's address", warning)
        else:
            log.info("the registered address %s is reachable from the agent's cluster now", settings.host)
    _publish(found)


def service_definition(settings: Settings) -> dict:
    """The service and its HTTP health check, as the agent's register endpoint takes them."""
    base = f"http://{settings.host}:{settings.port}"
    return {
        "name": settings.service_name,
        "service_id": settings.instance_id,
        "address": settings.host,
        "port": settings.port,
        "tags": [f"v{settings.version}"],
        # Prometheus' consul_sd_configs reads it (the scrape config of docs/OPERATIONS.md): the metrics are at
        # the service's address, on their own port.
        "meta": {"version": settings.version, **metrics_files.meta(settings)},
        # Callers pick by these (upstream.balancing): an instance in warning gets a small share, not none.
        "weights": {"Passing": settings.weight_passing, "Warning": settings.weight_warning},
        "check": {
            **consul.Check.http(
                f"{base}/health",
                interval=settings.check_interval,
                timeout=settings.check_timeout,
                deregister=settings.deregister_after,
            ),
            # py-consul's Check.http (1.8.0) has no parameters for these; the agent takes them beside the others.
            "SuccessBeforePassing": settings.check_success_before_passing,
            "FailuresBeforeCritical": settings.check_failures_before_critical,
        },
    }


def register(settings: Settings, client: consul.Consul | None = None) -> bool:
    """Register this instance, once: the keeper (RegistrationKeeper) tries again until it is."""
    client = client or make_consul(settings.consul)
    try:
        client.agent.service.register(**service_definition(settings))
    except consul.ACLPermissionDenied as exc:
        log.error(
            "could not register %s: Consul refused the token (%s); CONSUL_HTTP_TOKEN must be set "
            "and allow service:write on %r",
            settings.instance_id,
            str(exc).strip(),
            settings.service_name,
        )
        return False
    except CONSUL_ERRORS as exc:
        log.warning("registering with Consul failed: %s", exc)
        return False
    log.info("registered %s at %s with Consul %s", settings.instance_id, settings.bind, settings.consul.url)
    check_address(settings, client)
    return True


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
        self._busy = threading.Lock()
        self._rng = random.Random()
        self._loop = BackgroundLoop("registration-keeper", self._keep_once)
        self._refused_wait = background.backoff(background.MAX_RETRY_REFUSED)
        self._error_wait = background.backoff()
        self._check = self._loop.retrying(CONSUL_ERRORS, on_retry=self._say_why, wait=self._wait_after)
        self._address_checked_at = time.monotonic()
        os.register_at_fork(
            before=self._busy.acquire,
            after_in_parent=self._busy.release,
            # The child has no keeper thread; its copy of the lock is simply released.
            after_in_child=self._busy.release,
        )

    def start(self) -> RegistrationKeeper:
        log.info(
            "registration keeper started: checking every ~%.0f s that Consul still knows %s",
            self._interval,
            self._settings.instance_id,
        )
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop keeping; returns once no check is in progress, so none re-registers after a deregister.
        A check starts only under the lock and only while the loop is not stopping."""
        self._loop.stop(timeout=self._settings.consul.timeout + 1.0)
        with self._busy:
            pass

    def _keep_once(self) -> bool | None:
        if self._loop.wait(self._interval * self._rng.uniform(0.8, 1.2)):
            return False
        self._check(self._check_once)
        return None

    def _check_once(self) -> None:
        with self._busy:
            if self._loop.stopping:
                return
            if self._settings.instance_id not in self._client.agent.services():
                log.warning(
                    "%s is not registered with Consul (agent restarted?); registering", self._settings.instance_id
                )
                register(self._settings, client=self._client)
                self._address_checked_at = time.monotonic()
            elif time.monotonic() - self._address_checked_at >= ADDRESS_RECHECK_SECONDS:
                self._address_checked_at = time.monotonic()
                check_address(self._settings, self._client)

    def _wait_after(self, retry_state: RetryCallState) -> float:
        refused = retry_state.outcome is not None and isinstance(
            retry_state.outcome.exception(), consul.ACLPermissionDenied
        )
        return (self._refused_wait if refused else self._error_wait)(retry_state)

    def _say_why(self, retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None and retry_state.next_action is not None
        exc = retry_state.outcome.exception()
        pause = retry_state.next_action.sleep
        if isinstance(exc, consul.ACLPermissionDenied):
            # Retrying fast will not fix a token; say so now and then, without a crash loop.
            log.error("Consul refuses this instance's token (CONSUL_HTTP_TOKEN); retrying in about %.0f s", pause)
        else:
            log.warning(
                "Consul at %s does not answer (%s); retrying in about %.0f s",
                self._settings.consul.url,
                type(exc).__name__,
                pause,
            )
