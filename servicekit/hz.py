"""The worker's Hazelcast client: members and names from Consul, connected in the background."""

from __future__ import annotations

import logging
import threading
import time

import hazelcast
from hazelcast.errors import HazelcastError
from hazelcast.lifecycle import LifecycleState
from tenacity import RetryCallState

from . import hazelcast_reactor_fix, kvconfig
from .background import BackgroundLoop
from .consul_client import make_consul
from .errors import CONSUL_ERRORS, DiscoveryError, HazelcastUnavailable
from .settings import Settings

log = logging.getLogger(__name__)

# The client's own default is 120 s per operation; a request should fail long before that.
INVOCATION_TIMEOUT = 5.0
# The client retries the cluster with a backoff that grows to 30 s by default; on loopback a retry is
# cheap, and a service should be back within seconds of the cluster.
RETRY_MAX_BACKOFF = 2.0
# While not connected, say so at this interval: a silent retry loop looks like a hang in the log.
WAITING_LOG_INTERVAL = 10.0
# How often the connect thread looks at the connection while it waits, so that close() ends it at once.
_WAITING_POLL = 0.5
# What reading the settings from Consul may raise; each is retried with the shared backoff.
_CONFIG_ERRORS = (DiscoveryError, kvconfig.ConfigError, *CONSUL_ERRORS)


class Hazelcast:
    """Owns one client per worker process. Threads do not survive a fork, so create it after the fork.

    Connecting runs on a named daemon thread: gunicorn boots even while Consul or the cluster is down,
    and /health answers 503 until the client is connected.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._connected = threading.Event()
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
            self._connected.set()
            log.info("connected to Hazelcast cluster %r", self.config and self.config.cluster_name)
        elif state in (LifecycleState.DISCONNECTED, LifecycleState.SHUTTING_DOWN, LifecycleState.SHUTDOWN):
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
            self._client = hazelcast.HazelcastClient(
                cluster_name=config.cluster_name,
                cluster_members=list(config.members),
                async_start=True,
                invocation_timeout=INVOCATION_TIMEOUT,
                backup_ack_to_client_enabled=False,
                retry_max_backoff=RETRY_MAX_BACKOFF,
                lifecycle_listeners=[self._on_state],
            )
            self._waiting_since = time.monotonic()
        if self._connected.is_set() or self._loop.wait(_WAITING_POLL):
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

    def _ready(self) -> tuple[hazelcast.HazelcastClient, kvconfig.SharedConfig]:
        # No config yet means Consul KV could not be read: as unavailable as a cluster that is down.
        if self._client is None or self.config is None or not self._connected.is_set():
            raise HazelcastUnavailable("not connected to the Hazelcast cluster")
        return self._client, self.config

    def map(self):
        client, config = self._ready()
        return client.get_map(config.map_name).blocking()

    def idempotency_map(self):
        """The facade's Idempotency-Key answers, in a map named after the log's (facade/idempotency.py)."""
        client, config = self._ready()
        return client.get_map(f"{config.map_name}.idempotency").blocking()

    def queue(self):
        client, config = self._ready()
        return client.get_queue(config.queue_name).blocking()

    def log_size_counter(self):
        """The log's size in bytes (logging_svc.store.LogSize), a PN counter named after the map; its
        calls answer futures, so a POST need not wait for the increment."""
        client, config = self._ready()
        return client.get_pn_counter(f"{config.map_name}-bytes")

    def log_size_marker(self):
        """Who rebuilt the log's size after the cluster restarted (logging_svc.store.LogSize.load): a map in
        memory only, beside the counter, so that both are lost together."""
        client, config = self._ready()
        return client.get_map(f"{config.map_name}-bytes.rebuilt").blocking()

    def close(self) -> None:
        # The connect thread is at most inside one Consul call (bounded by its timeout) or a short wait;
        # once it is over, no client can be built behind this one's back.
        self._loop.stop(timeout=self._settings.consul.timeout + 1.0)
        if self._client is not None:
            try:
                self._client.shutdown()
            except HazelcastError as exc:
                log.warning("Hazelcast client shutdown failed: %s", exc)
