"""gunicorn server hooks shared by the three services.

The master registers the instance once (`when_ready`, after the socket is bound) and deregisters it
once (`on_exit`, after the workers stopped); workers never talk to Consul's agent endpoints.
"""

from __future__ import annotations

import logging

from . import registry
from .settings import Settings

log = logging.getLogger(__name__)

SHUTDOWN_KEY = "servicekit.on_shutdown"


def registration_hooks(settings: Settings):
    def when_ready(server) -> None:
        if not registry.register(settings):
            log.error("could not register %s with Consul at %s", settings.instance_id, settings.consul.url)

    def on_exit(server) -> None:
        registry.deregister(settings)

    return when_ready, on_exit


def worker_exit(server, worker) -> None:
    """Close what the app opened in this worker (Hazelcast client, consumer thread)."""
    app = getattr(worker, "wsgi", None)
    extensions = getattr(app, "extensions", {})
    for close in reversed(extensions.get(SHUTDOWN_KEY, [])):
        close()


def on_shutdown(app, close) -> None:
    """Ask worker_exit to call `close` when this worker stops."""
    app.extensions.setdefault(SHUTDOWN_KEY, []).append(close)
