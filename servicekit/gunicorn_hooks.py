"""gunicorn server hooks shared by the three services.

The master registers the instance once (`when_ready`, after the socket is bound), keeps it registered,
and deregisters it once; workers never talk to Consul's agent endpoints.

Stopping is graceful in this order: on SIGTERM the master first leaves Consul, waits `drain_seconds`
while the facades' watches drop the instance (their blocking queries return at once), and only then
lets gunicorn stop its workers, which finish their in-flight requests. A rolling restart loses nothing.
"""

from __future__ import annotations

import logging
import time

from . import registry
from .settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_KEY = "servicekit.on_shutdown"


def registration_hooks(settings: Settings):
    keeper = registry.RegistrationKeeper(settings)
    state = {"left": False}

    def leave() -> None:
        if not state["left"]:
            state["left"] = True
            keeper.stop()
            registry.deregister(settings)

    def when_ready(server) -> None:
        # One try here, so a missing agent never holds up the boot; the keeper retries with backoff.
        if not registry.register(settings, attempts=1):
            log.error("not registered with Consul at %s yet; retrying in the background", settings.consul.url)
        keeper.start()
        stop_workers = server.handle_term

        # gunicorn has no hook between SIGTERM and stopping the workers; the arbiter dispatches signals
        # to its handle_<name> methods from its main loop, so this runs there, not in a signal handler.
        def handle_term() -> None:
            log.info("SIGTERM: leaving Consul, draining for %.1f s before the workers stop",
                     settings.drain_seconds)
            leave()
            time.sleep(settings.drain_seconds)
            stop_workers()

        server.handle_term = handle_term

    def on_exit(server) -> None:
        leave()

    return when_ready, on_exit


# How long a new worker waits for its Hazelcast connection before it takes requests. Bounded, so a
# missing cluster never holds up the boot; the worker then answers 503 until the client connects.
WORKER_READY_TIMEOUT = 10.0


def post_worker_init(worker) -> None:
    """Hold a new worker back from the shared socket until it can serve.

    /health reaches one worker at random; without this, Consul could see one ready worker pass the
    check while its sibling is still connecting and would answer the next request with a 503.
    """
    hz = getattr(worker.wsgi, "extensions", {}).get("hazelcast")
    if hz is not None and not hz.wait_connected(WORKER_READY_TIMEOUT):
        log.warning("not connected to Hazelcast after %.0f s; serving 503s until it is", WORKER_READY_TIMEOUT)


def worker_exit(server, worker) -> None:
    """Close what the app opened in this worker (Hazelcast client, consumer thread, watches)."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {})
    for close in reversed(extensions.get(SHUTDOWN_KEY, [])):
        close()


def on_shutdown(app, close) -> None:
    """Ask worker_exit to call `close` when this worker stops."""
    app.extensions.setdefault(SHUTDOWN_KEY, []).append(close)
