"""What a request id and a W3C traceparent may look like, and which id a request goes by.

The grammar alone, apart from servicekit.request_id (Flask hooks, tracing, log filter): every service
reads the ids its callers send, and the queue item carries one (contracts.queue_item). The facade's nginx
answers some requests before Flask sees them, with an id chosen by the same rules (conf/nginx.conf.tmpl
spells them in its own regular expressions; tests/integration/test_front_door.py holds the two to each other).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

HEADER = "X-Request-ID"
TRACEPARENT = "traceparent"
MAX_LENGTH = 128
# Letters, digits and a few separators: a uuid, a ULID, a trace id, "svc-123:4" all fit; spaces, quotes,
# brackets, % and control characters (which would break a log line or a header) do not.
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_LENGTH}}}", re.ASCII)
# W3C Trace Context, level 1: version-traceid-parentid-flags, lower-case hex only.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII | re.DOTALL)


def valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    parent_id: str
    flags: str


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The traceparent header as the spec reads it; None for anything it says to ignore."""
    if value is None:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    # Version ff is invalid; version 00 has exactly four fields; a later version may append "-...".
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return TraceParent(trace_id, parent_id, flags)


def request_id_for(given: str | None, traceparent: str | None) -> str:
    """The id a request goes by: a valid X-Request-ID; else a valid traceparent's trace id; else a new one."""
    if valid_request_id(given):
        assert given is not None
        return given
    parent = parse_traceparent(traceparent)
    return parent.trace_id if parent else uuid.uuid4().hex
