"""One request followed across the services: its X-Request-ID and W3C trace context.

Which id a request goes by: a valid X-Request-ID from the caller; else, when a valid `traceparent` came,
its trace id (so a caller that traces but sends no X-Request-ID finds its trace id in our logs); else a
new id, which is then also the trace id of the traceparent sent on (a uuid4 hex, or with OpenTelemetry the
trace id its server span began). An invalid X-Request-ID is
replaced, never echoed nor logged: it is text from the outside going into every log line and header.

The id is bound to a context variable for the request (and for each item the consumer takes), so every
log line written meanwhile carries it (LogFilter, wired in servicekit/logs.py), and every answer echoes it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from flask import Flask, Response, g, request
from werkzeug.datastructures import Headers

from contracts.id_format import HEADER, TRACEPARENT, parse_traceparent, valid_request_id

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("request_context", default=None)


@dataclass
class RequestContext:
    request_id: str
    trace_id: str
    flags: str = "01"
    # The caller sent an X-Request-ID that was not valid, and this one was made instead.
    replaced: bool = False

    def outgoing_headers(self) -> dict[str, str]:
        """The headers of a call to another service: the same request id, and a traceparent with the same
        trace and a new parent id (this call's span)."""
        return {HEADER: self.request_id, TRACEPARENT: f"00-{self.trace_id}-{secrets.token_hex(8)}-{self.flags}"}


def from_headers(headers: Mapping[str, str] | Headers) -> RequestContext:
    given = headers.get(HEADER)
    parent = parse_traceparent(headers.get(TRACEPARENT))
    new = uuid.uuid4().hex
    trace_id = parent.trace_id if parent else new
    flags = parent.flags if parent else "01"
    if valid_request_id(given):
        assert given is not None
        return RequestContext(given, trace_id, flags)
    return RequestContext(trace_id, trace_id, flags, replaced=given is not None)


def current() -> RequestContext | None:
    return _current.get()


def current_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx else None


def echoed(headers: list[tuple[str, str]]) -> str | None:
    """The request id among an answer's headers (gunicorn's list of pairs), for its access line."""
    for name, value in headers or ():
        if name.lower() == "x-request-id" and valid_request_id(value):
            return value
    return None


@contextlib.contextmanager
def bound(rid: str | None, trace_id: str | None = None) -> Iterator[None]:
    """Log lines written inside carry `rid` (none when None): for work outside a request, like the consumer's."""
    ctx = None if rid is None else RequestContext(rid, trace_id or uuid.uuid4().hex)
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


class LogFilter(logging.Filter):
    """Adds `request_id` (None outside a request) and `request_tag` (" rid=ID", or "" outside a request)
    to every record, for the formats of servicekit/logs.py."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or current_id()
        record.request_id = rid
        record.request_tag = f" rid={rid}" if rid else ""
        return True


def install(app: Flask, adopt: Callable[[RequestContext], None] | None = None) -> None:
    """Bind each request's id before any other hook of ours runs (the Host check logs with it) and echo it on
    every answer, errors included. `adopt` sees each request's context before it is bound: the server span's
    trace, when OpenTelemetry is set up (servicekit.tracing.adopt_span, whose hooks are installed first)."""

    @app.before_request
    def bind_request_id():
        ctx = from_headers(request.headers)
        if adopt is not None:
            adopt(ctx)
        g.request_token = _current.set(ctx)
        if ctx.replaced:
            log.warning("ignored an invalid %s from the caller", HEADER)

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        ctx = _current.get()
        if ctx is not None:
            response.headers[HEADER] = ctx.request_id
        return response

    @app.teardown_request
    def unbind_request_id(exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            _current.reset(token)
