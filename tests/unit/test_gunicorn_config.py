"""What each service's gunicorn.conf.py gives gunicorn: read the way gunicorn reads it, with -c."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from gunicorn.app.base import Application

from servicekit import gunicorn_hooks, metrics_files
from servicekit.gunicorn_config import AccessLogger

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


@pytest.fixture(autouse=True)
def logging_left_as_found():
    """These tests run the services' logging setup; the rest of the run keeps pytest's."""
    names = ["", "gunicorn.error", "gunicorn.access", "hazelcast"]
    saved = [
        (
            logging.getLogger(n),
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
        )
        for n in names
    ]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def gunicorn_config(package: str, monkeypatch, app_port: str = "") -> dict:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("APP_PORT", app_port)
    # Reading the config points the process at the instance's metrics directory; undone after the test.
    monkeypatch.setenv(metrics_files.ENV, "")
    monkeypatch.setattr(sys, "argv", ["gunicorn"])
    cfg = ConfigOnly(ROOT / package / "gunicorn.conf.py").cfg
    return {name: setting.get() for name, setting in cfg.settings.items()}


@pytest.mark.parametrize(
    "package, app, workers",
    [
        ("facade", "facade:create_app()", 2),
        ("logging_svc", "logging_svc:create_app()", 2),
        ("messages_svc", "messages_svc:create_app()", 1),
    ],
)
def test_each_service_config_keeps_its_app_workers_and_the_shared_worker_settings(package, app, workers, monkeypatch):
    cfg = gunicorn_config(package, monkeypatch)
    assert cfg["wsgi_app"] == app
    assert cfg["workers"] == workers
    # The facade's gunicorn listens behind its nginx (on PORT) at PORT + APP_PORT_OFFSET, on loopback only.
    assert cfg["bind"] == ["127.0.0.1:11123" if package == "facade" else "127.0.0.1:9123"]
    assert cfg["worker_class"] == "gthread"
    assert cfg["threads"] == 4
    assert cfg["graceful_timeout"] == 10
    assert cfg["control_socket_disable"] is True
    assert cfg["keepalive"] == 2
    assert cfg["logger_class"] is AccessLogger
    assert cfg["post_worker_init"] is gunicorn_hooks.post_worker_init
    assert cfg["worker_exit"] is gunicorn_hooks.worker_exit
    assert cfg["when_ready"].__qualname__ == "registration_hooks.<locals>.when_ready"
    assert cfg["on_exit"].__qualname__ == "registration_hooks.<locals>.on_exit"
    assert cfg["child_exit"] is metrics_files.child_exit


def test_the_facade_listens_behind_its_front_door_on_loopback_whatever_address_it_registers(monkeypatch):
    monkeypatch.setenv("SERVICE_HOST", "127.100.0.21")
    cfg = gunicorn_config("facade", monkeypatch, app_port="12080")
    assert cfg["bind"] == ["127.0.0.1:12080"]


def access_logger(level: str):
    from gunicorn.config import Config

    from servicekit import logs

    config = logs.logconfig("logging-service-box-8081")
    config["loggers"]["gunicorn.access"]["level"] = level
    cfg = Config()
    cfg.set("logconfig_dict", config)
    return AccessLogger(cfg)


def test_no_access_line_is_built_while_the_access_logger_is_off(monkeypatch):
    logger = access_logger("WARNING")
    monkeypatch.setattr(logger, "atoms", lambda *args: pytest.fail("access atoms built for a dropped line"))
    logger.access(None, None, {}, None)


def test_an_access_line_carries_the_instance_id_once_the_access_logger_is_on(capsys):
    from datetime import timedelta
    from types import SimpleNamespace

    logger = access_logger("INFO")
    resp = SimpleNamespace(status="200 OK", headers=[], sent=2, response_length=2)
    req = SimpleNamespace(headers=[], method="GET", path="/health", query="", version=(1, 1), uri="/health")
    logger.access(
        resp,
        req,
        {"REQUEST_METHOD": "GET", "RAW_URI": "/health", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"},
        timedelta(milliseconds=1),
    )
    err = capsys.readouterr().err
    assert "[logging-service-box-8081 pid=" in err and "gunicorn.access" in err and "GET /health" in err, err
