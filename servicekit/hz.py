"""The worker's Hazelcast client: members and names from Consul, connected in the background."""

from __future__ import annotations

import logging
import random
import threading

import hazelcast
from hazelcast.errors import HazelcastError
from hazelcast.lifecycle import LifecycleState

from . import hazelcast_reactor_fix, kvconfig
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


class Hazelcast:
    """Owns one client per worker process. Threads do not survive a fork, so create it after the fork.

    Connecting runs on a named daemon thread: gunicorn boots even while Consul or the cluster is down,
    and /health answers 503 until the client is connected.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._client: hazelcast.HazelcastClient | None = None
        self.config: kvconfig.SharedConfig | None = None
        self._thread = threading.Thread(target=self._connect, name="hazelcast-connect", daemon=True)

    def start(self) -> "Hazelcast":
        self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _load_config(self) -> kvconfig.SharedConfig | None:
        consul = make_consul(self._settings.consul)
        delay = 0.5
        while not self._stop.is_set():
            try:
                return kvconfig.load(consul)
            except (DiscoveryError, kvconfig.ConfigError, *CONSUL_ERRORS) as exc:
                log.warning("cannot read the Hazelcast settings from Consul yet: %s", exc)
                self._stop.wait(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 3.0)
        return None

    def _on_state(self, state: str) -> None:
        if state == LifecycleState.CONNECTED:
            self._connected.set()
            log.info("connected to Hazelcast cluster %r", self.config and self.config.cluster_name)
        elif state in (LifecycleState.DISCONNECTED, LifecycleState.SHUTTING_DOWN, LifecycleState.SHUTDOWN):
            if self._connected.is_set():
                log.warning("Hazelcast client is %s", state.lower())
            self._connected.clear()

    def _connect(self) -> None:
        config = self._load_config()
        if config is None:
            return
        self.config = config
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
        self._report_while_waiting(config)

    def _report_while_waiting(self, config: kvconfig.SharedConfig) -> None:
        waited = 0.0
        while not self._stop.is_set() and not self._connected.wait(WAITING_LOG_INTERVAL):
            waited += WAITING_LOG_INTERVAL
            log.warning(
                "not connected to Hazelcast cluster %r at %s after %.0f s; /health answers 503, still trying",
                config.cluster_name, ", ".join(config.members), waited,
            )

    def _ready(self) -> tuple[hazelcast.HazelcastClient, kvconfig.SharedConfig]:
        # No config yet means Consul KV could not be read: as unavailable as a cluster that is down.
        if self._client is None or self.config is None or not self._connected.is_set():
            raise HazelcastUnavailable("not connected to the Hazelcast cluster")
        return self._client, self.config

    def map(self):
        client, config = self._ready()
        return client.get_map(config.map_name).blocking()

    def queue(self):
        client, config = self._ready()
        return client.get_queue(config.queue_name).blocking()

    def close(self) -> None:
        self._stop.set()
        if self._client is not None:
            try:
                self._client.shutdown()
            except HazelcastError as exc:
                log.warning("Hazelcast client shutdown failed: %s", exc)
