"""What every service does the same way at its HTTP boundary: strict JSON in, JSON errors out."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Request, jsonify
from hazelcast.errors import HazelcastError
from werkzeug.exceptions import HTTPException

from .hz import HazelcastUnavailable

log = logging.getLogger(__name__)


class BadInput(ValueError):
    """The request body is not what the endpoint takes; the message is safe to show the client."""


class Unavailable(RuntimeError):
    """A dependency is down; the message is safe to show the client."""


class BadGateway(RuntimeError):
    """Another service answered, but not as agreed; the message is safe to show the client."""


def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object. Any Content-Type is accepted, so `curl -d '{"msg": "hi"}'` works."""
    # MAX_CONTENT_LENGTH makes get_data raise 413 for a body over the limit.
    raw = request.get_data(cache=False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("body is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadInput("body must be a JSON object")
    return data


def require_string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        raise BadInput(f"missing field {key!r}")
    if not isinstance(value, str):
        raise BadInput(f"field {key!r} must be a string")
    if not value:
        raise BadInput(f"field {key!r} must not be empty")
    return value


def _error(status: int, message: str):
    return jsonify(error=message), status


def install_error_handlers(app: Flask) -> None:
    """Every error leaves as {"error": "..."} with the right status, never as a stack trace."""

    @app.errorhandler(BadInput)
    def bad_input(exc: BadInput):
        return _error(400, str(exc))

    @app.errorhandler(Unavailable)
    @app.errorhandler(HazelcastUnavailable)
    @app.errorhandler(HazelcastError)
    def unavailable(exc: Exception):
        log.warning("answering 503: %s", exc)
        return _error(503, str(exc))

    @app.errorhandler(BadGateway)
    def bad_gateway(exc: BadGateway):
        return _error(502, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return _error(500, "internal error")


def configure_app(app: Flask, max_body_bytes: int) -> None:
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False
    install_error_handlers(app)


def health_response(details: dict | None = None, **checks: bool):
    """200 when every dependency is connected, 503 otherwise; Consul's HTTP check reads the status."""
    ok = all(checks.values())
    body = {"status": "passing" if ok else "critical", "checks": {k: bool(v) for k, v in checks.items()}}
    if details:
        body["details"] = details
    return jsonify(body), 200 if ok else 503
