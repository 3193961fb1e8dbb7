"""The worker's Hazelcast client: members and names from Consul, connected in the background."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hazelcast
from hazelcast.errors import HazelcastError, OperationTimeoutError
from hazelcast.future import Future
from hazelcast.lifecycle import LifecycleState
from tenacity import RetryCallState

from . import hazelcast_reactor_fix, kvconfig
from .background import BackgroundLoop
from .consul_client import make_consul
from .errors import CONSUL_ERRORS, DiscoveryError, HazelcastUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

# The client's timeouts, chosen against the members' detection (conf/hazelcast.xml: a heartbeat every 1 s, a
# member silent for 10 s dropped) and a request's deadline (REQUEST_DEADLINE, 5 s); docs/RELIABILITY.md,
# "A host cut off", has the measurements.
#
# The client pings a connection it has written nothing to for HEARTBEAT_INTERVAL, and closes one it has read
# nothing from for HEARTBEAT_TIMEOUT (its defaults: 5 s and 60 s). A call sent to a member that went silent
# (its host cut off) waits for that close, whatever its invocation timeout: with 60 s, a worker whose cluster
# view came from the cut member learnt of its loss a minute late, and sent every call for the member's
# partitions to it meanwhile (issue 18: every POST timed out for 50 s). 7 s closes the connection 7 to 8 s
# after the member's last answer, before the members drop it (10 to 11 s), so the client listens to a
# survivor when the new member list and partition table come out. Below that, a member's pause (a GC, a
# loaded machine) would cost its clients their connection for nothing: a healthy member answers the 1 s
# pings. Requests never wait for it: every call is bounded by call_timeout (or the request's deadline).
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 7.0
# How long the client retries a call that failed in a way it may retry (no connection, a partition
# migrating, a member gone; the client's default is 120 s). No request waits longer than REQUEST_DEADLINE, so
# no call's retries need to. It bounds nothing else: a call that was sent waits for an answer or a close.
INVOCATION_TIMEOUT = 5.0
# The client never sends a write again after its connection closed (its default, made explicit): the
# facade's queue offer must not be repeated (a second item), nor the log size's add (counted twice). The
# facade retries a logging call itself, at another instance, by id.
REDO_OPERATION = False
# The client retries the cluster with a backoff that grows to 30 s by default; on loopback a retry is
# cheap, and a service should be back within seconds of the cluster.
RETRY_MAX_BACKOFF = 2.0
# While not connected, say so at this interval: a silent retry loop looks like a hang in the log.
WAITING_LOG_INTERVAL = 10.0
# How often the connect thread looks at the connection while it waits, so that close() ends it at once.
_WAITING_POLL = 0.5
# What reading the settings from Consul may raise; each is retried with the shared backoff.
_CONFIG_ERRORS = (DiscoveryError, kvconfig.ConfigError, *CONSUL_ERRORS)


def wait(future: Future, timeout: float) -> Any:
    """The future's result, or OperationTimeoutError when none came within `timeout` s: the client itself
    waits for a call sent to a silent member until its heartbeat closes the connection (HEARTBEAT_TIMEOUT).
    The call is not cancelled: it may still be done later, and its result is then dropped."""
    answered = threading.Event()
    future.add_done_callback(lambda _: answered.set())
    if not answered.wait(timeout):
        raise OperationTimeoutError(f"no answer from the Hazelcast cluster within {timeout:.2f} s")
    return future.result()


class Bounded:
    """A proxy (map, queue) whose calls wait at most `timeout` s for their answer: the library's blocking
    proxy, with a bound (wait above)."""

    def __init__(self, proxy: Any, timeout: float):
        self._proxy = proxy
        self._timeout = timeout

    def blocking(self) -> Any:
        """The library's blocking proxy, whose calls wait for their answer however long (until the heartbeat
        closes a silent member's connection): for a thread that holds no request, and for a call that must not
        be given up on (the consumer's poll, given up on, could still take an item that nobody would keep)."""
        return self._proxy.blocking()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._proxy, name)
        if not callable(method):
            return method

        def bounded(*args: Any, **kwargs: Any) -> Any:
            return wait(method(*args, **kwargs), self._timeout)

        return bounded


@dataclass(frozen=True)
class Structures:
    """The structures a service uses, by name: their proxies are made as soon as the client is connected
    (Hazelcast._create_proxies)."""

    maps: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    pn_counters: tuple[str, ...] = ()


# Each service names its structures after the names in Consul KV (config/logging/map, config/messages/queue),
# which the client reads before it connects.
Naming = Callable[[kvconfig.SharedConfig], Structures]


class Hazelcast:
    """Owns one client per worker process. Threads do not survive a fork, so create it after the fork.

    Connecting runs on a named daemon thread: gunicorn boots even while Consul or the cluster is down,
    and /health answers 503 until the client is connected. Every call waits at most `call_timeout` (or what
    its caller passes): as long as another service waits for this one (HTTP_READ_TIMEOUT), so a request
    thread is free again when its caller gives up, even while a member does not answer. The structures are
    the service's: it names them (`structures`) and asks for each by name (get_map, get_queue, get_pn_counter).
    """

    def __init__(self, settings: Settings, structures: Naming = lambda shared: Structures()):
        self._settings = settings
        self._structures = structures
        self.call_timeout = settings.read_timeout
        # `_connected` is what callers see: the link is up AND the client is ours to call. The library fires
        # CONNECTED from its reactor thread while its constructor is still running (async_start), before
        # `_client` is assigned: released on that event alone, a worker answered 503 ("not connected")
        # for a moment while /health said passing. The lock orders the two signals.
        self._connected = threading.Event()
        self._state_lock = threading.Lock()
        self._link_up = False
        self._client: hazelcast.HazelcastClient | None = None
        self.config: kvconfig.SharedConfig | None = None
        self._loop = BackgroundLoop("hazelcast-connect", self._connect_step)
        self._read_config = self._loop.retrying(_CONFIG_ERRORS, on_retry=self._config_not_yet)
        self._waiting_since = 0.0
        self._next_report = WAITING_LOG_INTERVAL

    def start(self) -> Hazelcast:
        self._loop.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @staticmethod
    def _config_not_yet(retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        log.warning("cannot read the Hazelcast settings from Consul yet: %s", retry_state.outcome.exception())

    def _on_state(self, state: str) -> None:
        if state == LifecycleState.CONNECTED:
            self._set_link(True, state)
        elif state in (LifecycleState.DISCONNECTED, LifecycleState.SHUTTING_DOWN, LifecycleState.SHUTDOWN):
            self._set_link(False, state)

    def _set_link(self, up: bool, state: str) -> None:
        with self._state_lock:
            self._link_up = up
            self._publish(state)

    def _publish(self, state: str) -> None:
        """With `_state_lock` held: connected once the link is up and the constructor has returned."""
        if self._link_up and self._client is not None:
            if not self._connected.is_set():
                log.info("connected to Hazelcast cluster %r", self.config and self.config.cluster_name)
            self._connected.set()
        else:
            if self._connected.is_set():
                log.warning("Hazelcast client is %s", state.lower())
            self._connected.clear()

    def _connect_step(self) -> bool | None:
        """Read the settings, build the client, then say so while it is not connected; False once done."""
        if self.config is None:
            self.config = self._read_config(kvconfig.load, make_consul(self._settings.consul))
        config = self.config
        if self._client is None:
            if self._loop.stopping:
                return False
            # Before the client starts its reactor thread (see the module).
            hazelcast_reactor_fix.apply()
            log.info("connecting to Hazelcast cluster %r at %s", config.cluster_name, ", ".join(config.members))
            # async_start returns at once and keeps trying in the background; reconnect_mode ON (the
            # default) brings the client back after the cluster was gone. Backup acks go through the
            # member, as in non-smart clients: acked to the client directly, the first write of a new
            # client waited the whole backup timeout (5 s) for an ack whose listener was not registered
            # yet. The member still answers only after the synchronous backup is written.
            client = hazelcast.HazelcastClient(
                cluster_name=config.cluster_name,
                cluster_members=list(config.members),
                async_start=True,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                invocation_timeout=INVOCATION_TIMEOUT,
                redo_operation=REDO_OPERATION,
                backup_ack_to_client_enabled=False,
                retry_max_backoff=RETRY_MAX_BACKOFF,
                lifecycle_listeners=[self._on_state],
            )
            with self._state_lock:
                self._client = client
                self._publish(LifecycleState.CONNECTED if self._link_up else LifecycleState.DISCONNECTED)
            self._waiting_since = time.monotonic()
        if self._connected.is_set():
            self._create_proxies(self._client, config)
            return False
        if self._loop.wait(_WAITING_POLL):
            return False
        if time.monotonic() - self._waiting_since >= self._next_report:
            log.warning(
                "not connected to Hazelcast cluster %r at %s after %.0f s; /health answers 503, still trying",
                config.cluster_name,
                ", ".join(config.members),
                self._next_report,
            )
            self._next_report += WAITING_LOG_INTERVAL
        return None

    def _create_proxies(self, client: hazelcast.HazelcastClient, config: kvconfig.SharedConfig) -> None:
        """Every proxy the service uses, made here rather than by a request. The client makes a proxy once, on
        first use, with a call to the cluster that nothing bounds (ProxyManager._create_proxy): a worker
        whose first POST came while a member was silent held its thread until the heartbeat closed the
        connection. Made here, a request finds it made; one that could not be made now (too few members:
        split-brain protection) is made by its first use, as before."""
        wanted = self._structures(config)
        makes = [
            *((client.get_map, name) for name in wanted.maps),
            *((client.get_queue, name) for name in wanted.queues),
            *((client.get_pn_counter, name) for name in wanted.pn_counters),
        ]
        for make, name in makes:
            try:
                make(name)
            except HazelcastError as exc:
                log.warning("could not create the Hazelcast proxy %r yet (its first use will): %s", name, exc)

    def _ready(self) -> tuple[hazelcast.HazelcastClient, kvconfig.SharedConfig]:
        # No config yet means Consul KV could not be read: as unavailable as a cluster that is down.
        if self._client is None or self.config is None or not self._connected.is_set():
            raise HazelcastUnavailable("not connected to the Hazelcast cluster")
        return self._client, self.config

    def shared_config(self) -> kvconfig.SharedConfig:
        """The settings read from Consul KV, the structures' names among them; HazelcastUnavailable until
        connected."""
        return self._ready()[1]

    def get_map(self, name: str, timeout: float | None = None) -> Bounded:
        client, _ = self._ready()
        return Bounded(client.get_map(name), timeout or self.call_timeout)

    def get_queue(self, name: str, timeout: float | None = None) -> Bounded:
        client, _ = self._ready()
        return Bounded(client.get_queue(name), timeout or self.call_timeout)

    def get_pn_counter(self, name: str) -> Any:
        """A PN counter, whose calls answer futures (bound a wait for one with `wait`)."""
        client, _ = self._ready()
        return client.get_pn_counter(name)

    def close(self) -> None:
        # The connect thread is at most inside one Consul call (bounded by its timeout) or a short wait;
        # once it is over, no client can be built behind this one's back.
        self._loop.stop(timeout=self._settings.consul.timeout + 1.0)
        if self._client is not None:
            try:
                self._client.shutdown()
            except HazelcastError as exc:
                log.warning("Hazelcast client shutdown failed: %s", exc)
