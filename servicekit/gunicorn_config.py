"""The gunicorn settings every instance shares: bind addresses, workers, logging (`base`). A service's
gunicorn.conf.py takes them with its hooks from servicekit.gunicorn_hooks.for_service; the bench's references
(bench/gunicorn.conf.py) take `base` alone.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from gunicorn.glogging import Logger

from . import logs, request_id
from .settings import Settings

LOCALHOST = ipaddress.IPv4Address("127.0.0.1")

# The worker settings of every service, and of the bench's references (bench/gunicorn.conf.py), which
# take them from here so the comparison stays like for like.
WORKER_SETTINGS: dict[str, Any] = {
    "workers": 2,
    # gthread, with requests read by the event loop: slow or half-open clients hold no thread (see the module).
    "worker_class": "servicekit.workers.BufferingThreadWorker",
    "threads": 4,
    "graceful_timeout": 10,
    # gunicorn's control socket lives at one path per user; several instances would fight over it.
    "control_socket_disable": True,
    # Seconds an idle kept-alive connection stays open (gunicorn's default, made explicit).
    "keepalive": 2,
}


class AccessLogger(Logger):
    """gunicorn's logger, building an access line only when gunicorn.access would write it.

    With `logconfig_dict` set, gunicorn builds every request's access atoms (some twenty fields, headers
    and environ included) before the logger drops the line at its level; the access lines are off here
    (servicekit/logs.py), as they were before, so that work would be spent on every request for nothing.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            # The request's context is gone by now (Flask's teardown ran); its id is in the echoed header.
            with request_id.bound(request_id.echoed(resp.headers)):
                super().access(resp, req, environ, request_time)


def binds(settings: Settings) -> list[str]:
    """The address the instance registers, and 127.0.0.1 on the same port when that is another address: a
    tool on the host (`curl http://127.0.0.1:8080/facade`) reaches it as on a single-host stack. Consul and
    the other hosts still use the registered address only."""
    try:
        address = ipaddress.ip_address(settings.host)
    except ValueError:
        return [settings.bind]  # a name: it may well resolve to 127.0.0.1, which cannot be bound twice
    if address.version != 4 or address.is_unspecified or address == LOCALHOST:
        return [settings.bind]
    return [settings.bind, f"{LOCALHOST}:{settings.port}"]


def base(settings: Settings) -> dict[str, Any]:
    """Bind address, worker settings and logging for an instance, without Consul hooks."""
    log_settings = {"service": settings.service_name, "log_format": settings.log_format}
    logs.configure(settings.instance_id, **log_settings)  # the master's lines before gunicorn sets up its loggers
    return {
        "bind": binds(settings),
        "logconfig_dict": logs.logconfig(settings.instance_id, **log_settings),
        "logger_class": AccessLogger,
        **WORKER_SETTINGS,
    }
