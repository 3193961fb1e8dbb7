"""gunicorn's gthread worker, changed so that slow or half-open clients cannot take every thread.

The stock worker hands a connection to a thread as soon as it is accepted, and that thread then blocks
until the client has sent its request: a handful of clients that send their headers or body slowly, or
stop half-way, hold all the threads and nobody else is served. Here the worker's event loop reads each
request without blocking until its headers (and a Content-Length body) are complete, so a thread only
gets a request it can serve at once; a client that has not sent a whole request after CLIENT_TIMEOUT
seconds is closed. Client sockets used by the threads time out too, so a client that stops reading its
response frees the thread.

gevent, the usual answer to slow clients, is no option here: the Hazelcast client's reactor does not run
under its monkey patching (hazelcast-python-client issue 205). Use it with worker_class =
"servicekit.workers.BufferingThreadWorker".
"""

from __future__ import annotations

import errno
import re
import selectors
import socket
import time
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

# Seconds a client has to send a whole request, and for each read or write a thread does on its socket.
CLIENT_TIMEOUT = 5.0
# A declared body up to this size is read by the event loop; a larger one goes to a thread straight
# away, where the app refuses it by its Content-Length (413) without reading it.
MAX_BUFFERED_BODY = 1024 * 1024
# Headers longer than this go to gunicorn's parser, which rejects them.
MAX_HEADER_BYTES = 64 * 1024
RECV_SIZE = 64 * 1024

_HEADERS_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d{1,18})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
# Bodies a thread must read as they come: chunked ones, and those whose client waits for "100 Continue".
_STREAMED = re.compile(rb"^(transfer-encoding|expect):", re.IGNORECASE | re.MULTILINE)


def request_complete(received: bytes | bytearray) -> bool:
    """Whether `received` holds a whole request, as far as the event loop waits for one."""
    end = received.find(_HEADERS_END)
    if end < 0:
        return len(received) > MAX_HEADER_BYTES
    head = bytes(received[:end])
    if _STREAMED.search(head):
        return True
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return True
    length = int(match.group(1))
    return length > MAX_BUFFERED_BODY or len(received) - end - len(_HEADERS_END) >= length


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
        self.received = bytearray()

    def init(self):
        super().init()
        self._hand_over()

    def _hand_over(self) -> None:
        """Give the parser what the event loop read; before init() it is kept until the parser exists."""
        if self.parser is not None and self.received:
            self.parser.unreader.unread(bytes(self.received))
            self.received = bytearray()


class BufferingThreadWorker(ThreadWorker):
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

    def _read_request(self, conn) -> None:
        conn.sock.setblocking(False)
        # murder_pending() closes it after the deadline; every entry gets the same delay, so the deque
        # stays sorted by deadline as murder_pending expects.
        conn.timeout = time.monotonic() + CLIENT_TIMEOUT
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_data, conn))

    def _on_request_data(self, conn, client) -> None:
        try:
            chunk = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            conn.received += chunk
            if not request_complete(conn.received):
                return
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        if not chunk:
            # The client closed or reset the connection before its request was complete.
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        conn._hand_over()
        self.enqueue_req(conn)
