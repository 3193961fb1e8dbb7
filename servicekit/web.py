"""What every service does the same way at its HTTP boundary: strict JSON in, JSON errors out."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Request, current_app, jsonify, request
from hazelcast.errors import HazelcastError
from werkzeug.exceptions import HTTPException, MisdirectedRequest, UnsupportedMediaType

from contracts import paging

from . import metrics, registration, request_id, tracing
from .errors import RETRY_AFTER, BadGateway, BadInput, HazelcastUnavailable, InsufficientStorage, Unavailable
from .settings import Settings, host_is_accepted

log = logging.getLogger(__name__)

T = TypeVar("T")

# Our documents are flat ({"msg": "..."}); 32 levels leaves room for any client's envelope while a
# body of 64 KiB of brackets is turned away before json.loads recurses into it.
MAX_JSON_DEPTH = 32
# What changes the nesting depth: a bracket, a quote (strings do not count), an escape (so an escaped
# quote does not end a string). A plain alternation: linear, whatever the input.
_JSON_STRUCTURE = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def nesting_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays and objects nest deeper than `limit`. Brackets inside strings do not count."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = False
    for token in _JSON_STRUCTURE.findall(text):
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue
        elif token in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def require_json_content_type(request: Request) -> None:
    """415 unless the body is declared application/json (UTF-8, the only charset JSON has).

    A web page may POST text/plain, a form type or no type to any origin without asking first;
    application/json makes the browser ask with a CORS preflight, which no service grants (none sends
    Access-Control-Allow-* headers). So no page can write to a service, not even on the user's own machine.
    A page that rebinds its own name to the service is same-origin and needs no preflight: the Host check
    (install_host_check) turns that one away."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    if request.mimetype_params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("Content-Type must be application/json with charset utf-8, or no charset")


def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; the request must say Content-Type: application/json."""
    require_json_content_type(request)
    # MAX_CONTENT_LENGTH makes get_data raise 413 for a body over the limit.
    raw = request.get_data(cache=False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("body is not valid UTF-8") from None
    if nesting_exceeds(text):
        raise BadInput(f"body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        # NaN and Infinity are Python's extensions, not JSON.
        data = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise BadInput("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadInput("body must be a JSON object")
    return data


def require_string(data: dict[str, Any], key: str, max_chars: int | None = None) -> str:
    value = data.get(key)
    if value is None:
        raise BadInput(f"missing field {key!r}")
    if not isinstance(value, str):
        raise BadInput(f"field {key!r} must be a string")
    if not value:
        raise BadInput(f"field {key!r} must not be empty")
    if max_chars is not None and len(value) > max_chars:
        raise BadInput(f"field {key!r} must be at most {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's \ud800 escapes can smuggle in a lone surrogate, which no UTF-8 reader downstream takes.
        raise BadInput(f"field {key!r} must be valid Unicode text") from None
    return value


def require_message(data: dict[str, Any], key: str = "msg") -> str:
    """A message field, within the app's MAX_MESSAGE_CHARS."""
    return require_string(data, key, max_chars=current_app.config["MAX_MESSAGE_CHARS"])


def _error(status: int, message: str):
    return jsonify(error=message), status


def install_error_handlers(app: Flask) -> None:
    """Every error leaves as {"error": "..."} with the right status, never as a stack trace."""

    @app.errorhandler(BadInput)
    def bad_input(exc: BadInput):
        return _error(400, str(exc))

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable):
        log.warning("answering 503: %s", exc)
        response = jsonify(error=exc.public, **exc.fields)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response, 503

    @app.errorhandler(InsufficientStorage)
    def insufficient_storage(exc: InsufficientStorage):
        log.warning("answering 507: %s", exc)
        return _error(507, exc.public)

    @app.errorhandler(HazelcastUnavailable)
    @app.errorhandler(HazelcastError)
    def hazelcast_unavailable(exc: Exception):
        # The library's messages name members and internals; the client only needs to know it may retry.
        log.warning("answering 503: %s: %s", type(exc).__name__, exc)
        return jsonify(error="the Hazelcast cluster is unavailable"), 503, {"Retry-After": str(RETRY_AFTER)}

    @app.errorhandler(BadGateway)
    def bad_gateway(exc: BadGateway):
        return _error(502, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return _error(500, "internal error")


def install_host_check(app: Flask, accepted: frozenset[str]) -> None:
    """Serve a request only under an accepted name: DNS rebinding (a page on attacker.example whose name
    now resolves to 127.0.0.1) reaches the socket, but its requests carry the attacker's name.

    421 Misdirected Request, not 400: the request may be well formed; this server is just not the one
    for that name (RFC 9110 15.5.20). It also keeps apart, in logs and in monitoring, a client that sent a
    bad body (400) from one that reached the service through a name nobody configured.
    Flask's TRUSTED_HOSTS would answer 400, and its matching drops IPv6 names ("[::1]")."""

    @app.before_request
    def check_host():
        # request.host is the Host header ("" when malformed; two headers arrive joined by a comma), or
        # the bound address for an HTTP/1.0 request without one.
        if not host_is_accepted(request.host, accepted):
            log.warning(
                "refused a request for Host %r: not in ALLOWED_HOSTS, nor SERVICE_HOST",
                request.headers.get("Host", "")[:100],
            )
            raise MisdirectedRequest("this server does not answer for that host name")


def configure_app(app: Flask, settings: Settings) -> None:
    # First, so that every later hook (the Host check) logs with the request id and every answer echoes it.
    # The server span's hooks first: the request id bound next may be its trace id.
    tracing.install(app, settings.service_name, settings.instance_id)
    request_id.install(app, adopt=tracing.adopt_span)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_MESSAGE_CHARS"] = settings.max_message_chars
    app.json.sort_keys = False
    # After the request id's and the span's hooks, before the Host check: its clock starts before the checks,
    # and a 421 is counted.
    metrics.install(app)
    install_host_check(app, settings.accepted_host_names)
    install_error_handlers(app)


def health_response(details: dict | None = None, **checks: bool):
    """200 when every dependency is connected, 503 otherwise; Consul's HTTP check reads the status."""
    ok = all(checks.values())
    body: dict[str, Any] = {
        "status": "passing" if ok else "critical",
        "checks": {k: bool(v) for k, v in checks.items()},
    }
    if details:
        body["details"] = {**details, "pid": os.getpid()}  # which gunicorn worker answered: tests read every worker
    # Found at registration (servicekit.registration): wrong, but not a failed dependency.
    if warnings := registration.warnings():
        body["warnings"] = list(warnings)
    return jsonify(body), 200 if ok else 503


def read_limit(request: Request) -> int:
    """`limit` from the query string: a whole number from 1 to MAX_LIMIT, DEFAULT_LIMIT when absent."""
    text = request.args.get("limit")
    if text is None:
        return paging.DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= paging.MAX_LIMIT:
        raise BadInput(f"'limit' must be a whole number from 1 to {paging.MAX_LIMIT}")
    return int(text)


def read_cursor(request: Request, name: str, decode: Callable[[str], T]) -> T | None:
    """A cursor from the query string, decoded; None when absent; 400 when no page could have made it."""
    text = request.args.get(name)
    if text is None:
        return None
    try:
        return decode(text)
    except paging.BadCursor as exc:
        raise BadInput(f"{name!r} {exc}: pass back the 'next' of the previous page, unchanged") from None
