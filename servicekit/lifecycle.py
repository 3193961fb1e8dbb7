"""What an app opened, closed once when its worker stops: create_app (and what it installs) asks for a close
with `on_shutdown`; gunicorn's worker_exit hook (servicekit.gunicorn_hooks), or a test, calls `close_app`."""

from __future__ import annotations

from contextlib import ExitStack

SHUTDOWN_KEY = "servicekit.on_shutdown"


def shutdown_stack(app) -> ExitStack:
    """What the app opened, in the order it opened it; closing it runs the closes in reverse, so a thing
    is closed before what it depends on (the consumer before the Hazelcast client it polls)."""
    return app.extensions.setdefault(SHUTDOWN_KEY, ExitStack())


def on_shutdown(app, close) -> None:
    """Ask close_app (worker_exit, in a worker) to call `close` when the app is closed."""
    shutdown_stack(app).callback(close)


def close_app(app) -> None:
    """Close what create_app opened. Once: a second call finds nothing left to close."""
    stack = getattr(app, "extensions", {}).get(SHUTDOWN_KEY)
    if stack is not None:
        stack.close()
