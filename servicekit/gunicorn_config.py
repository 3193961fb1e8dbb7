"""The gunicorn settings every instance shares: bind addresses, workers, logging (`base`). A service's
gunicorn.conf.py takes them with its hooks from servicekit.gunicorn_hooks.for_service; the bench's references
(bench/gunicorn.conf.py) take `base` alone.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from . import logs, request_id
from .settings import LOCALHOST, Settings, app_port, listen_addresses

# The worker settings of every service, and of the bench's references (bench/gunicorn.conf.py), which
# take them from here so the comparison stays like for like.
WORKER_SETTINGS: dict[str, Any] = {
    "workers": 2,
    # gunicorn's threads read each request from the socket themselves: a slow client holds one. The facade,
    # which clients reach, is behind nginx, which reads requests whole first (stackctl/front_door.py); the
    # internal services are called by the facades only.
    "worker_class": "gthread",
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


def binds(settings: Settings, behind_front_door: bool = False) -> list[str]:
    """Where gunicorn listens: the instance's own addresses; or, behind its nginx, 127.0.0.1 on its APP_PORT
    (nginx listens on the instance's addresses, and only nginx calls gunicorn)."""
    if behind_front_door:
        return [f"{LOCALHOST}:{app_port(settings.port)}"]
    return listen_addresses(settings.host, settings.port)


def base(settings: Settings, behind_front_door: bool = False) -> dict[str, Any]:
    """Bind address, worker settings and logging for an instance, without Consul hooks."""
    log_settings = {"service": settings.service_name, "log_format": settings.log_format}
    logs.configure(settings.instance_id, **log_settings)  # the master's lines before gunicorn sets up its loggers
    return {
        "bind": binds(settings, behind_front_door),
        "logconfig_dict": logs.logconfig(settings.instance_id, **log_settings),
        "logger_class": AccessLogger,
        **WORKER_SETTINGS,
    }
