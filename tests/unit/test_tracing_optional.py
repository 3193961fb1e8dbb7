"""OpenTelemetry is optional: without an endpoint, or without the SDK, nothing is set up and nothing breaks."""

from __future__ import annotations

import sys

import pytest
from flask import Flask

from servicekit import tracing
from servicekit.settings import Settings
from servicekit.web import configure_app


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(tracing, "_set_up", False)
    monkeypatch.setattr(tracing, "_provider", None)


def _serves() -> None:
    app = Flask(__name__)
    configure_app(app, Settings.from_env("logging-service", 8081, env={}))
    app.get("/ok")(lambda: {"ok": True})
    response = app.test_client().get("/ok", headers={"X-Request-ID": "r1"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "r1"


def test_without_an_endpoint_nothing_is_set_up_even_with_the_sdk(monkeypatch):
    monkeypatch.delenv(tracing.ENDPOINT, raising=False)
    monkeypatch.delenv(tracing.TRACES_ENDPOINT, raising=False)
    assert tracing.setup("logging-service", "logging-service-box-8081") is None
    _serves()
    assert tracing._provider is None


def test_without_the_sdk_an_endpoint_sets_nothing_up_and_nothing_breaks(monkeypatch, caplog):
    monkeypatch.setenv(tracing.ENDPOINT, "http://127.0.0.1:9")
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    # None in sys.modules makes `import opentelemetry` raise ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert tracing.setup("logging-service", "logging-service-box-8081") is None
    assert "OpenTelemetry is not installed" in caplog.text
    _serves()
