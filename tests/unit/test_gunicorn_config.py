"""What each service's gunicorn.conf.py gives gunicorn: read the way gunicorn reads it, with -c."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from gunicorn.app.base import Application

from servicekit import gunicorn_hooks

ROOT = Path(__file__).resolve().parents[2]


class ConfigOnly(Application):
    def __init__(self, path: Path):
        self.path = path
        super().__init__()

    def init(self, parser, opts, args):
        return None

    def load_config(self):
        self.load_config_from_file(str(self.path))

    def load(self):
        raise AssertionError("the app is never loaded in these tests")


def gunicorn_config(package: str, monkeypatch) -> dict:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setattr(sys, "argv", ["gunicorn"])
    root_handlers = logging.getLogger().handlers[:]
    try:
        cfg = ConfigOnly(ROOT / package / "gunicorn.conf.py").cfg
    finally:
        logging.getLogger().handlers[:] = root_handlers
    return {name: setting.get() for name, setting in cfg.settings.items()}


@pytest.mark.parametrize(
    "package, app, workers",
    [("facade", "facade:create_app()", 2), ("logging_svc", "logging_svc:create_app()", 2),
     ("messages_svc", "messages_svc:create_app()", 1)],
)
def test_each_service_config_keeps_its_app_workers_and_the_shared_worker_settings(package, app, workers, monkeypatch):
    cfg = gunicorn_config(package, monkeypatch)
    assert cfg["wsgi_app"] == app
    assert cfg["workers"] == workers
    assert cfg["bind"] == ["127.0.0.1:9123"]
    assert cfg["worker_class"] == "servicekit.workers.BufferingThreadWorker"
    assert cfg["threads"] == 4
    assert cfg["graceful_timeout"] == 10
    assert cfg["control_socket_disable"] is True
    assert cfg["keepalive"] == 2
    assert cfg["post_worker_init"] is gunicorn_hooks.post_worker_init
    assert cfg["worker_exit"] is gunicorn_hooks.worker_exit
    assert cfg["when_ready"].__qualname__ == "registration_hooks.<locals>.when_ready"
    assert cfg["on_exit"].__qualname__ == "registration_hooks.<locals>.on_exit"
