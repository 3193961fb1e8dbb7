"""When the worker's event loop hands a request to a thread: only once it can be served without waiting."""

import pytest

from servicekit.workers import MAX_BUFFERED_BODY, MAX_HEADER_BYTES, request_complete

HEAD = b"POST /facade HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("received", "complete"),
    [
        (b"", False),
        (b"GET /health HTTP/1.1\r\nHost: x", False),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (HEAD + b"Content-Length: 11\r\n\r\n{\"msg\": ", False),
        (HEAD + b"Content-Length: 11\r\n\r\n{\"msg\": \"\"}", True),
        (HEAD + b"content-length:11\r\n\r\n{\"msg\": \"\"}GET / HTTP/1.1\r\n", True),
        (HEAD + b"Transfer-Encoding: chunked\r\n\r\n", True),
        (HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n", True),
        (HEAD + b"Content-Length: %d\r\n\r\n" % (MAX_BUFFERED_BODY + 1), True),
        (HEAD + b"Content-Length: 99999999999999999999999\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEADER_BYTES, True),
    ],
)
def test_a_request_is_complete_once_headers_and_declared_body_are_in(received, complete):
    assert request_complete(received) is complete
