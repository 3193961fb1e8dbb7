"""Unit tests close every app they build, so no watch, connect or consumer thread outlives its test."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from servicekit.lifecycle import close_app


@pytest.fixture
def closing() -> Callable[[Flask], Flask]:
    """`closing(create_app(...))` returns the app and closes it, as worker_exit would, when the test ends."""
    apps: list[Flask] = []

    def track(app: Flask) -> Flask:
        apps.append(app)
        return app

    yield track
    for app in reversed(apps):
        close_app(app)
