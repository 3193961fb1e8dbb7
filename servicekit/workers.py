"""gunicorn's gthread worker, changed so that slow or half-open clients cannot take every thread.

The stock worker gives a connection to a thread as soon as its first bytes arrive, and the thread then reads
the rest of the request from the socket with a timeout per read: a client that sends one byte every few
seconds, or stops half-way, holds the thread for as long as it likes, and eight such clients (2 workers x 4
threads) stop the facade. Here the worker's event loop reads each request whole before a thread sees it, so
a thread never waits for a client:

- Every request has one deadline, CLIENT_TIMEOUT seconds for all of it (headers and body), counted from
  the moment the loop starts waiting for it; a client that has not sent a whole request by then is closed.
- The loop parses the head with gunicorn's own parser, so it agrees with the thread on where the body
  starts and how it is framed. A Content-Length body, or a chunked one (followed by ChunkedBody, RFC 9112
  section 7.1), is buffered up to MAX_BODY_BYTES, the limit the apps enforce; a larger one is answered 413
  by the loop, a head over MAX_HEADER_BYTES 431 and broken chunk framing 400, without a thread; such an
  answer carries the request's X-Request-ID (as request_id would choose it from the head; a new one when
  the head never parsed) and is counted in servicekit.metrics under the route "unmatched". A head the
  parser refuses goes to a thread, whose parser refuses it from the same bytes without reading more.
- `Expect: 100-continue` gets its "100 Continue" from the loop, which then reads the body like any other.
  gunicorn's thread sends a second one before the final answer; clients must accept any number of 1xx
  answers (RFC 9110 section 15.2).
- What a client sent behind a request (pipelining) goes back to the loop, to be read like a new request:
  gunicorn's finish_request would give it straight to a thread, with no deadline for the rest of it.
- A connection that ends is half-closed and drained by the loop for up to LINGER seconds, so that the
  client reads the last answer instead of a reset. gunicorn does that in its event loop with a blocking
  read (util.close_graceful): a client that asks for "Connection: close" and then keeps its end open
  stalled every connection of the worker for 2 s.
- Client sockets used by the threads time out too (sendall counts CLIENT_TIMEOUT for the whole call), so a
  client that stops reading its answer frees the thread.

In production the usual answer to slow clients is a buffering reverse proxy in front (nginx reads whole
requests before it passes them on, and takes the answers as fast as the app writes them), which would make
this worker unnecessary; the services here are reached directly, so their workers do that part themselves.
gevent, the usual in-process answer, was not chosen: its monkey patching replaces the threads and sockets the
Hazelcast client's reactor runs on (hazelcast-python-client issue 205 reports the client hanging under
eventlet, which patches the same way; gevent itself was not tried). The loop reads the raw socket, so this
serves plain HTTP/1.x only (TLS or HTTP/2 would have to end in front).

The worker overrides gthread's accept, on_client_socket_readable, finish_request and murder_pending and
uses internals listed in GUNICORN_NAMES: it was read against gunicorn GUNICORN_MAJOR (27.0.1), and
tests/unit/test_workers.py fails when the installed gunicorn has another major version or lacks one of those
names. Use it with worker_class = "servicekit.workers.BufferingThreadWorker".
"""

from __future__ import annotations

import errno
import json
import logging
import selectors
import socket
import time
from collections import deque
from functools import partial
from http import HTTPStatus

from gunicorn.http.errors import NoMoreData
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from contracts.id_format import HEADER, request_id_for

from . import metrics
from .settings import max_body_bytes_from_env

log = logging.getLogger(__name__)

# The gunicorn major version this module's overrides were read against (27.0.1), and what of gunicorn's
# internals they use: modules and their names (a class's methods as "Class.method"), then the attributes
# gunicorn sets on instances (in __init__ or init_process) that the overrides read or change.
GUNICORN_MAJOR = 27
GUNICORN_NAMES = {
    "gunicorn.http.errors": ("NoMoreData",),
    "gunicorn.http.message": ("Request",),
    "gunicorn.http.unreader": ("IterUnreader", "IterUnreader.unread", "IterUnreader.take_buffered"),
    "gunicorn.workers.gthread": (
        "TConn",
        "TConn.init",
        "TConn.close",
        "ThreadWorker",
        "ThreadWorker.accept",
        "ThreadWorker.on_client_socket_readable",
        "ThreadWorker.finish_request",
        "ThreadWorker.murder_pending",
        "ThreadWorker.enqueue_req",
    ),
}
GUNICORN_INSTANCE_ATTRIBUTES = {
    "gunicorn.http.message.Message": ("unreader", "version", "headers"),
    "gunicorn.http.message.Request": ("method",),
    "gunicorn.workers.gthread.TConn": ("cfg", "sock", "client", "timeout", "parser", "data_ready"),
    "gunicorn.workers.gthread.ThreadWorker": ("poller", "keepalived_conns", "pending_conns", "nr_conns"),
}
# Seconds a client has to send a whole request, and for each read or write a thread does on its socket.
CLIENT_TIMEOUT = 5.0
# A head (request line and headers) longer than this is answered 431. gunicorn's own bound is far larger
# (limit_request_fields x limit_request_field_size, about 800 KiB), and a thread would read it.
MAX_HEADER_BYTES = 64 * 1024
# What a chunked body may take besides its content: size lines, extensions and trailers.
MAX_CHUNK_FRAMING = 64 * 1024
# gunicorn's bound on one chunk-size line (the default of limit_request_field_size).
MAX_CHUNK_LINE = 8190
# Seconds and bytes a closing connection is drained for: gunicorn's close_graceful defaults.
LINGER = 2.0
LINGER_MAX_BYTES = 64 * 1024
RECV_SIZE = 64 * 1024

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEAD_END = b"\r\n\r\n"
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class Refused(Exception):
    """The loop answers the request itself, then closes the connection."""

    def __init__(self, status: HTTPStatus, error: str):
        super().__init__(f"{status.value} {error}")
        self.status = status
        self.error = error

    def response(self, request_id: str) -> bytes:
        """The JSON error every service answers with, as raw HTTP, with the request's id like every answer.
        `request_id` was checked against the grammar (contracts.id_format): it is safe in a header."""
        body = json.dumps({"error": self.error}).encode()
        head = (
            f"HTTP/1.1 {self.status.value} {self.status.phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{HEADER}: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body


def _too_large(max_body_bytes: int) -> Refused:
    return Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is larger than {max_body_bytes} bytes")


class ChunkedBody:
    """Where a chunked body ends in a buffer that grows as its bytes arrive, and how large its content is.

    Incremental, so that a client sending a byte at a time costs the loop a byte's work each time. It
    follows gunicorn's ChunkedReader where the body ends; it may be more lenient than gunicorn elsewhere
    (chunk extensions are skipped, not checked): the thread's parser then refuses the body from bytes it
    already holds.
    """

    def __init__(self, start: int, max_body_bytes: int):
        self.start = start
        self.pos = start
        self.size = 0
        self.end: int | None = None
        self._max = max_body_bytes
        self._state = "size"
        self._left = 0

    def scan(self, buf: bytes | bytearray) -> bool:
        """True once the body (trailers included) is in `buf`. Raises Refused for a body the loop turns away."""
        while self.end is None:
            if not self._step(buf):
                if len(buf) - self.start > self._max + MAX_CHUNK_FRAMING:
                    raise _too_large(self._max)
                return False
        return True

    def _step(self, buf: bytes | bytearray) -> bool:
        """Move on by one line, one piece of a chunk or one delimiter; False when more bytes are needed."""
        if self._state == "size":
            eol = buf.find(b"\r\n", self.pos)
            if eol < 0:
                if len(buf) - self.pos > MAX_CHUNK_LINE:
                    raise Refused(HTTPStatus.BAD_REQUEST, "chunk size line too long")
                return False
            digits = bytes(buf[self.pos : eol]).split(b";", 1)[0].rstrip(b" \t")
            if not digits or not _HEX_DIGITS.issuperset(digits):
                raise Refused(HTTPStatus.BAD_REQUEST, "invalid chunk size")
            size = int(digits, 16)
            self.pos = eol + 2
            if size == 0:
                self._state = "trailers"
            elif self.size + size > self._max:
                raise _too_large(self._max)
            else:
                self.size += size
                self._left = size
                self._state = "data"
            return True
        if self._state == "data":
            taken = min(self._left, len(buf) - self.pos)
            self.pos += taken
            self._left -= taken
            if self._left:
                return False
            self._state = "data-end"
            return True
        if len(buf) - self.pos < 2:
            return False
        if self._state == "data-end":
            if buf[self.pos : self.pos + 2] != b"\r\n":
                raise Refused(HTTPStatus.BAD_REQUEST, "chunk not followed by CRLF")
            self.pos += 2
            self._state = "size"
            return True
        # Trailers: none (an empty line at once), or header lines up to an empty line.
        if buf[self.pos : self.pos + 2] == b"\r\n":
            self.end = self.pos + 2
            return True
        blank = buf.find(_HEAD_END, self.pos)
        if blank < 0:
            return False
        self.end = blank + len(_HEAD_END)
        return True


class PendingRequest:
    """One request as the event loop reads it, until a thread can serve it without waiting for the client.

    `data` holds everything received, what the client sent behind this request included; it all goes to the
    thread's parser, and what that parser does not use comes back to the loop as the next request.
    """

    def __init__(self, cfg, peer, max_body_bytes: int, data: bytes = b""):
        self.data = bytearray(data)
        # Set when the client waits for "100 Continue" before it sends the body; the loop sends it.
        self.continue_due = False
        self._cfg = cfg
        self._peer = peer
        self._max = max_body_bytes
        self._searched = 0
        self._parsed = False
        self._end = 0
        self._chunked: ChunkedBody | None = None
        # From the head once it parses: what a refusal by the loop answers and counts with.
        self.method = metrics.UNKNOWN_METHOD
        self.request_id: str | None = None

    def id_for_answer(self) -> str:
        """The id a refusal echoes: the request's own (contracts.id_format), else a new one."""
        return self.request_id or request_id_for(None, None)

    def feed(self, chunk: bytes) -> bool:
        """Add bytes from the client; True once a thread can have the request. Raises Refused."""
        self.data += chunk
        if not self._parsed and not self._parse_head():
            return False
        if self._chunked is not None:
            return self._chunked.scan(self.data)
        return len(self.data) >= self._end

    def _parse_head(self) -> bool:
        end = self.data.find(_HEAD_END, max(0, self._searched - len(_HEAD_END) + 1))
        if end < 0 or end > MAX_HEADER_BYTES:
            self._searched = len(self.data)
            if len(self.data) > MAX_HEADER_BYTES:
                raise Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request header section too large")
            return False
        try:
            request = Request(self._cfg, IterUnreader([bytes(self.data)]), self._peer)
        except NoMoreData:
            # That blank line did not end the head (one may come before the request line): wait for another.
            self._searched = end + len(_HEAD_END)
            return False
        except Exception:
            # Whatever the parser refuses (400, 417, 501), the thread's parser refuses from the same bytes,
            # without reading more, and answers it.
            self._parsed = True
            return True
        self._parsed = True
        self.method = request.method
        self.request_id = request_id_for(
            next((value for name, value in request.headers if name == "X-REQUEST-ID"), None),
            next((value for name, value in request.headers if name == "TRACEPARENT"), None),
        )
        body_start = len(self.data) - len(request.unreader.take_buffered())
        # gunicorn accepted the head: a Transfer-Encoding ends in chunked and comes without Content-Length.
        if any(name == "TRANSFER-ENCODING" for name, _ in request.headers):
            self._chunked = ChunkedBody(body_start, self._max)
            has_body = True
        else:
            length = next((int(value) for name, value in request.headers if name == "CONTENT-LENGTH"), 0)
            if length > self._max:
                raise _too_large(self._max)
            self._end = body_start + length
            has_body = length > 0
        # gunicorn refuses any other expectation (417) and ignores this one from HTTP/1.0 clients.
        expects_continue = request.version >= (1, 1) and any(
            name == "EXPECT" and value.lower() == "100-continue" for name, value in request.headers
        )
        self.continue_due = expects_continue and has_body and len(self.data) == body_start
        return True


class _ClientSocket(socket.socket):
    """Blocking mode with a timeout: a thread never waits on one client for ever."""

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        if flag:
            self.settimeout(CLIENT_TIMEOUT)
        else:
            super().setblocking(False)


class _Conn(TConn):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: PendingRequest | None = None
        self.lingered = 0

    def init(self):
        super().init()
        self._hand_over()

    def _hand_over(self) -> None:
        """Give the parser what the event loop read; before init() it is kept until the parser exists."""
        if self.parser is not None and self.pending is not None:
            self.parser.unreader.unread(bytes(self.pending.data))
            self.pending = None


class BufferingThreadWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_body_bytes = max_body_bytes_from_env()
        # Connections being half-closed and drained, oldest first (all get the same LINGER).
        self.lingering_conns: deque[_Conn] = deque()

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        sock = _ClientSocket(fileno=client_sock.detach())
        self._read_request(_Conn(self.cfg, sock, client_addr, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has its next request coming: read it in the loop, like a new one."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_request(conn)

    def finish_request(self, conn, fs):
        """A thread is done with a connection: the loop takes it back, to read or to close."""
        try:
            keep_alive = False if fs.cancelled() else fs.result()
        except Exception:
            keep_alive = None  # gunicorn's own finish_request closes it
        if keep_alive is False:
            self._linger(conn)
            return
        if keep_alive is True:
            pipelined = conn.parser.unreader.take_buffered()
            if pipelined:
                self._read_request(conn, pipelined)
                return
        super().finish_request(conn, fs)

    def murder_pending(self):
        """Close requests past their deadline (gthread's), and connections done lingering."""
        super().murder_pending()
        now = time.monotonic()
        while self.lingering_conns and self.lingering_conns[0].timeout <= now:
            conn = self.lingering_conns.popleft()
            self.poller.unregister(conn.sock)
            self._close(conn)

    def _read_request(self, conn, received: bytes = b"") -> None:
        conn.pending = PendingRequest(self.cfg, conn.client, self.max_body_bytes, received)
        conn.sock.setblocking(False)
        # murder_pending() closes it after the deadline; every entry gets the same delay, so the deque
        # stays sorted by deadline as murder_pending expects.
        conn.timeout = time.monotonic() + CLIENT_TIMEOUT
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_data, conn))
        if received:
            self._advance(conn, b"")

    def _on_request_data(self, conn, client) -> None:
        try:
            chunk = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            # The client closed or reset the connection before its request was complete.
            self._stop_reading(conn)
            self._close(conn)
            return
        self._advance(conn, chunk)

    def _advance(self, conn, chunk: bytes) -> None:
        request = conn.pending
        try:
            complete = request.feed(chunk)
        except Refused as refusal:
            log.debug("refused a request from %s: %s", conn.client, refusal)
            # Counted like the requests Flask answers, under the route no rule matched.
            metrics.count_request(request.method, metrics.UNMATCHED, refusal.status.value, None)
            self._stop_reading(conn)
            self._send(conn, refusal.response(request.id_for_answer()))
            self._linger(conn)
            return
        if request.continue_due:
            request.continue_due = False
            if not self._send(conn, CONTINUE):
                self._stop_reading(conn)
                self._close(conn)
                return
        if complete:
            self._stop_reading(conn)
            conn.data_ready = True
            conn._hand_over()
            self.enqueue_req(conn)

    def _stop_reading(self, conn) -> None:
        self.poller.unregister(conn.sock)
        self.pending_conns.remove(conn)

    @staticmethod
    def _send(conn, data: bytes) -> bool:
        """Send a few bytes without blocking; False when the socket would not take them all."""
        try:
            return conn.sock.send(data) == len(data)
        except OSError:
            return False

    def _linger(self, conn) -> None:
        """Half-close, and let the loop read what the client still sends until it closes or LINGER passes."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + LINGER
        conn.lingered = 0
        self.lingering_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering_data, conn))

    def _on_lingering_data(self, conn, client) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.lingered += len(data)
        if data and conn.lingered < LINGER_MAX_BYTES:
            return
        self.poller.unregister(client)
        self.lingering_conns.remove(conn)
        self._close(conn)

    def _close(self, conn) -> None:
        self.nr_conns -= 1
        conn.close()
