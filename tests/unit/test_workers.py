"""When the worker's event loop hands a request to a thread: only once the thread can serve it without waiting."""

import importlib
import inspect
import io
import re

import gunicorn
import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from servicekit.workers import (
    CONTINUE,
    GUNICORN_INSTANCE_ATTRIBUTES,
    GUNICORN_MAJOR,
    GUNICORN_NAMES,
    MAX_CHUNK_FRAMING,
    MAX_HEADER_BYTES,
    PendingRequest,
    Refused,
)

LIMIT = 1000
CFG = Config()
PEER = ("127.0.0.1", 40000)
HEAD = b"POST /facade HTTP/1.1\r\nHost: x\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def pending(data: bytes = b"") -> PendingRequest:
    return PendingRequest(CFG, PEER, LIMIT, data)


def complete_at(*pieces: bytes) -> list[bool]:
    """Whether the request is complete after each piece arrives."""
    request = pending()
    return [request.feed(piece) for piece in pieces]


@pytest.mark.parametrize(
    ("pieces", "complete"),
    [
        ([b""], [False]),
        ([b"GET /health HTTP/1.1\r\nHost: x", b"\r\n\r\n"], [False, True]),
        ([HEAD + b'Content-Length: 11\r\n\r\n{"msg": ', b'""}'], [False, True]),
        # A complete request with the start of the next behind it: the thread takes the first.
        ([HEAD + b'content-length:11\r\n\r\n{"msg": ""}GET / HTTP/1.1\r\n'], [True]),
        ([CHUNKED, b"5\r\nhel", b"lo\r\n", b"0\r\n", b"\r\n"], [False, False, False, False, True]),
        ([CHUNKED + b'5;name="value"\r\nhello\r\n0\r\nX-Trailer: 1\r\n', b"\r\n"], [False, True]),
        ([CHUNKED + b"0\r\n\r\nGET / HTTP/1.1\r\n"], [True]),
        ([b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"0\r\n\r\n"], [False, True]),
        # Heads gunicorn refuses go to a thread at once: its parser answers them without reading more.
        ([HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"], [True]),
        ([HEAD + b"Transfer-Encoding: identity\r\n\r\n"], [True]),
        ([HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n"], [True]),
        ([HEAD + b"Expect: something\r\nContent-Length: 5\r\n\r\n"], [True]),
        ([b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"], [True]),
    ],
    ids=[
        "nothing",
        "head",
        "length",
        "pipelined",
        "chunked",
        "chunk-extension-and-trailer",
        "chunked-pipelined",
        "gzip-chunked",
        "chunked-and-length",
        "identity",
        "two-lengths",
        "unknown-expectation",
        "bad-header",
    ],
)
def test_a_request_is_complete_once_its_head_and_whole_body_are_in(pieces, complete):
    assert complete_at(*pieces) == complete


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (HEAD + b"Content-Length: %d\r\n\r\n" % (LIMIT + 1), 413),
        (HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n", 413),
        (CHUNKED + b"%x\r\n" % (LIMIT + 1), 413),
        (CHUNKED + b"100\r\n" + b"a" * 256 + b"\r\n" + b"300\r\n" + b"a" * 700, 413),
        # Small chunks whose extensions pile up.
        (CHUNKED + (b"1;" + b"e" * 8000 + b"\r\na\r\n") * (MAX_CHUNK_FRAMING // 8000 + 1), 413),
        (CHUNKED + b"zz\r\n", 400),
        (CHUNKED + b"\r\n", 400),
        (CHUNKED + b"1\r\nab\r\n", 400),
        (CHUNKED + b"1" * 9000, 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEADER_BYTES, 431),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n", 431),
    ],
    ids=[
        "length-over-limit",
        "huge-length",
        "chunk-over-limit",
        "chunks-over-limit",
        "framing-over-limit",
        "bad-chunk-size",
        "empty-chunk-size",
        "chunk-without-crlf",
        "endless-chunk-size",
        "endless-head",
        "long-head",
    ],
)
def test_the_loop_refuses_what_no_thread_should_read(data, status):
    with pytest.raises(Refused) as refused:
        pending().feed(data)
    assert refused.value.status == status
    head, body = refused.value.response("rid-1").split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in head
    assert b"\r\nX-Request-ID: rid-1\r\n" in head + b"\r\n"
    assert body.startswith(b'{"error": "')


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("headers", "answered_id"),
    [
        (b"X-Request-ID: client-42\r\n", "client-42"),
        (b"traceparent: 00-%s-00f067aa0ba902b7-01\r\n" % TRACE_ID.encode(), TRACE_ID),
        (b"X-Request-ID: client-42\r\ntraceparent: 00-%s-00f067aa0ba902b7-01\r\n" % TRACE_ID.encode(), "client-42"),
        # Not echoed: it would go into a header and the log as sent.
        (b"X-Request-ID: has space\r\n", None),
        (b"", None),
    ],
    ids=["request-id", "traceparent", "both", "invalid-id", "none"],
)
def test_a_refusal_by_the_loop_carries_the_requests_id_as_flask_would_choose_it(headers, answered_id):
    request = pending()
    with pytest.raises(Refused):
        request.feed(HEAD + headers + b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
    assert request.method == "POST"
    if answered_id is None:
        assert re.fullmatch(r"[0-9a-f]{32}", request.id_for_answer())
    else:
        assert request.id_for_answer() == answered_id


def test_a_head_too_large_to_parse_is_answered_with_a_new_id():
    request = pending()
    with pytest.raises(Refused):
        request.feed(b"GET / HTTP/1.1\r\nX-Request-ID: client-42\r\nX: " + b"a" * MAX_HEADER_BYTES)
    assert re.fullmatch(r"[0-9a-f]{32}", request.id_for_answer())
    assert request.method == "unknown"


def test_a_body_up_to_the_limit_is_taken():
    assert pending(HEAD + b"Content-Length: %d\r\n\r\n" % LIMIT + b"a" * LIMIT).feed(b"")
    assert pending(CHUNKED + b"%x\r\n" % LIMIT + b"a" * LIMIT + b"\r\n0\r\n\r\n").feed(b"")


@pytest.mark.parametrize(
    ("head", "due"),
    [
        (HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n", True),
        (HEAD + b"Expect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        (HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhel", False),
        (HEAD + b"Expect: 100-continue\r\n\r\n", False),
        (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", False),
        (HEAD + b"Content-Length: 5\r\n\r\n", False),
    ],
    ids=["length", "chunked", "body-already-coming", "no-body", "http-1.0", "no-expectation"],
)
def test_the_loop_says_continue_when_the_client_waits_for_it(head, due):
    request = pending()
    request.feed(head)
    assert request.continue_due is due
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


def chunk(content: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(content), content)


messages = st.builds(
    lambda chunks, chunked, trailer, tail: (
        chunks,
        (CHUNKED + b"".join(map(chunk, chunks)) + b"0\r\n" + trailer + b"\r\n")
        if chunked
        else HEAD + b"Content-Length: %d\r\n\r\n" % sum(map(len, chunks)) + b"".join(chunks),
        tail,
    ),
    st.lists(st.binary(min_size=1, max_size=60), max_size=8),
    st.booleans(),
    st.sampled_from([b"", b"X-Trailer: 1\r\n"]),
    st.sampled_from([b"", b"GET /health HTTP/1.1\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"]),
)


@settings(max_examples=200, derandomize=True)
@given(message=messages, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=6))
def test_the_loop_and_gunicorns_parser_agree_where_a_request_ends(message, cuts):
    chunks, request_bytes, tail = message
    stream = request_bytes + tail
    cuts = sorted({cut % (len(stream) + 1) for cut in cuts} | {len(stream)})
    request, received, complete_after = pending(), 0, None
    for cut in cuts:
        if request.feed(stream[received:cut]) and complete_after is None:
            complete_after = cut
        received = cut
    # Complete with the request's last byte, not before it.
    assert complete_after == min(cut for cut in cuts if cut >= len(request_bytes))
    # What the loop hands over, gunicorn reads as the same body, leaving the same bytes for the next request.
    parser = RequestParser(CFG, iter([bytes(request.data)]), PEER)
    parsed = next(parser)
    assert parsed.body.read() == b"".join(chunks)
    assert parser.unreader.take_buffered() == tail


def test_the_worker_was_written_for_the_installed_gunicorns_major_version():
    # The worker overrides gthread internals; another major gunicorn needs workers.py read against it first.
    assert int(gunicorn.__version__.split(".")[0]) == GUNICORN_MAJOR


@pytest.mark.parametrize(
    ("module", "name"), [(module, name) for module, names in GUNICORN_NAMES.items() for name in names]
)
def test_every_gunicorn_internal_the_worker_uses_is_there(module, name):
    found = importlib.import_module(module)
    for part in name.split("."):
        assert hasattr(found, part), f"{module}.{name} is gone: read servicekit/workers.py against this gunicorn"
        found = getattr(found, part)


@pytest.mark.parametrize(
    ("cls", "attribute"),
    [(cls, attribute) for cls, attributes in GUNICORN_INSTANCE_ATTRIBUTES.items() for attribute in attributes],
)
def test_every_gunicorn_instance_attribute_the_worker_uses_is_still_set(cls, attribute):
    module, name = cls.rsplit(".", 1)
    source = inspect.getsource(getattr(importlib.import_module(module), name))
    assert re.search(rf"\bself\.{attribute}\s*=", source), f"{cls} no longer sets self.{attribute}"
