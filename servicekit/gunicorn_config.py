"""The gunicorn settings the three services share. Each service's gunicorn.conf.py is a few lines:

    globals().update(gunicorn_config.for_service(SERVICE_NAME, DEFAULT_PORT, wsgi_app="facade:create_app()"))

gunicorn reads its settings from the names the config file defines, so the file takes them from here.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from gunicorn.glogging import Logger

from . import gunicorn_hooks, logs, metrics_files, request_id
from .settings import Settings, app_port

LOCALHOST = ipaddress.IPv4Address("127.0.0.1")

# The worker settings of every service, and of the bench's references (bench/gunicorn.conf.py), which
# take them from here so the comparison stays like for like.
WORKER_SETTINGS: dict[str, Any] = {
    "workers": 2,
    # gunicorn's threads read each request from the socket themselves: a slow client holds one. The facade,
    # which clients reach, is behind nginx, which reads requests whole first (servicekit/front_door.py); the
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


def listen_addresses(host: str, port: int) -> list[str]:
    """The address an instance registers, and 127.0.0.1 on the same port when that is another address: a
    tool on the host (`curl http://127.0.0.1:8080/facade`) reaches it as on a single-host stack. Consul and
    the other hosts still use the registered address only. Where gunicorn binds, or the facade's nginx."""
    bind = f"{host}:{port}"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [bind]  # a name: it may well resolve to 127.0.0.1, which cannot be bound twice
    if address.version != 4 or address.is_unspecified or address == LOCALHOST:
        return [bind]
    return [bind, f"{LOCALHOST}:{port}"]


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


def for_service(
    service_name: str, default_port: int, wsgi_app: str, behind_front_door: bool = False, **overrides: Any
) -> dict[str, Any]:
    """Every setting of one service's gunicorn.conf.py, the Consul registration hooks included. Behind the
    front door (the facade), the instance still registers PORT, nginx's: see servicekit/front_door.py."""
    settings = Settings.from_env(service_name, default_port)
    metrics_files.use(settings)  # before anything imports prometheus_client (see servicekit/metrics_files.py)
    when_ready, on_exit = gunicorn_hooks.registration_hooks(settings)
    return {
        **base(settings, behind_front_door),
        "settings": settings,
        "wsgi_app": wsgi_app,
        "when_ready": when_ready,
        "on_exit": on_exit,
        "post_worker_init": gunicorn_hooks.post_worker_init,
        "worker_exit": gunicorn_hooks.worker_exit,
        "child_exit": metrics_files.child_exit,
        **overrides,
    }
